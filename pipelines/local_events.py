"""What `genpipe run` shows and reports of a kfp.local run: its log lines turned into events
(task start/end, training progress, waits, error lines) and each task process's exit cause.

kfp.local (2.17) prints everything to stdout; pipelines.local replaces stdout with an
`_EventStream` for the run (everything still goes to the run's log file), and records each
task process's exit code, which kfp.local reduces to pass/fail.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TASK_START = re.compile(r"Executing task .*?'(?P<task>[\w-]+)'")
_TASK_END = re.compile(
    r"Task .*?'(?P<task>[\w-]+)'.* finished with status .*?(?P<status>SUCCESS|FAILURE)"
)
_PROGRESS = re.compile(r"genpipe-progress (?P<body>.*)")
_ERROR = re.compile(
    r"^\s*(?:zoo\.errors\.|[\w.]*)(?P<kind>\w*Error|TrainingDiverged): (?P<msg>.+)$"
)
#: a task's outputs as kfp.local lists them: ingest's names the run's MLflow run
_RUN_ID = re.compile(r"^\s+mlflow_run_id: '(?P<id>[0-9a-f]{32})'$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a task says what it waits on (zoo.tracking.call, the promotion lock): shown, not just logged
_WAITING = re.compile(r"(?P<msg>waiting for (?:MLflow|the promotion lock) .+)$")


class _EventStream(io.TextIOBase):
    """stdout replacement: writes everything to the log, turns known lines into events."""

    def __init__(self, log: Any, on_event: Callable[[str, dict[str, str]], None] | None) -> None:
        self.log = log
        self.on_event = on_event
        self.buf = ""
        self.task = ""
        self.failures: list[tuple[str, str]] = []  # (task, error line)
        self.errors_this_task = 0  # error lines since the running task started
        self.run_id = ""  # the MLflow run, once ingest's outputs named it

    def write(self, s: str) -> int:
        self.log.write(s)
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    def _emit(self, kind: str, fields: dict[str, str]) -> None:
        if self.on_event:
            self.on_event(kind, fields)

    def _line(self, line: str) -> None:
        if m := _TASK_START.search(line):
            self.task = m["task"]
            self.errors_this_task = 0
            self._emit("task_start", {"task": self.task})
        elif m := _TASK_END.search(line):
            self._emit("task_end", {"task": m["task"], "status": m["status"]})
        elif m := _PROGRESS.search(line):
            fields = dict(kv.split("=", 1) for kv in m["body"].split() if "=" in kv)
            self._emit("progress", {"task": self.task, **fields})
        elif not self.run_id and (m := _RUN_ID.match(line)):
            self.run_id = m["id"]
            self._emit("run", {"run_id": self.run_id})
        elif m := _WAITING.search(line):
            self._emit("waiting", {"task": self.task, "message": m["msg"]})
        elif m := _ERROR.match(line):
            self.failures.append((self.task, f"{m['kind']}: {m['msg']}" if m["kind"] else m["msg"]))
            self.errors_this_task += 1

    def task_exit(self, code: int) -> None:
        """A task process ended; one that failed with no error line of its own is recorded
        by its exit cause (a signal or an exit code)."""
        if code != 0 and not self.errors_this_task:
            self.failures.append((self.task, exit_cause(code)))

    def failure_message(self, log_path: Path) -> str | None:
        if not self.failures:
            return None
        task, err = self.failures[-1]
        # GenpipeError subclasses carry a message meant for the user: show it alone.
        for prefix in (
            "DataError: ",
            "ConfigError: ",
            "GenpipeError: ",
            "StackError: ",
            "TrainingDiverged: ",
        ):
            if err.startswith(prefix):
                err = err[len(prefix) :]
                break
        # After train: its model is logged, and `--resume` evaluates it without training.
        resume = (
            f"; the model trained: `genpipe run ... --resume {self.run_id}` evaluates it"
            if task in ("evaluate", "register") and self.run_id
            else ""
        )
        return f"task {task} failed: {err}{resume} (full log: {log_path})"


@contextlib.contextmanager
def _recording_exit_codes(stream: _EventStream) -> Any:
    """Tell `stream` each task process's exit code (kfp.local keeps only pass/fail), so a
    task that died without an error line (a signal, the OOM killer) is reported by its cause."""
    from kfp.local import subprocess_task_handler as sth

    inner = sth.run_local_subprocess  # kfp's, or the warm server's (pipelines.warm)

    def run_local_subprocess(full_command: list[str], env_vars: Any = None) -> int:
        code = inner(full_command, env_vars)
        stream.task_exit(code)
        return code

    sth.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        sth.run_local_subprocess = inner


def exit_cause(code: int) -> str:
    """A task process's exit code in words: 'killed by SIGKILL (out of memory?)', 'exit code 2'."""
    import signal

    if code < 0 or code > 128:
        try:
            name = signal.Signals(-code if code < 0 else code - 128).name
        except ValueError:
            return f"exit code {code}"
        oom = " (out of memory?)" if name == "SIGKILL" else ""
        return f"{'killed by ' if code < 0 else f'exit code {code}: killed by '}{name}{oom}"
    return f"exit code {code}"
