"""`genpipe run` interrupted (Ctrl-C): the running task is asked to stop and waited for, then
the run's MLflow run is ended KILLED if its task could not say so itself.

With the warm server, the stop travels through it (pipelines.warm_wire: the CLI half-closes
its connection; the session SIGTERMs the run's fork, which does the same to its task's
session; each session SIGKILLs after warm_spare.STOP_GRACE_S). Without it, kfp.local's own
subprocess tasks would keep running: `_run_task` replaces kfp's runner for them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.local_events import _EventStream

#: pipelines.local.OnEvent: what `genpipe run` shows
OnEvent = Callable[[str, dict[str, Any]], None]


def interrupted(stream: _EventStream, on_event: OnEvent | None) -> None:
    """After Ctrl-C: the running task was asked to stop and has ended (it marks its MLflow
    run KILLED itself), but the pipeline's exit task does not run, so a run still open is
    ended KILLED here; then `on_event("interrupted", {run_id, status, task})` (run_id and
    status "" when ingest had not named the run yet)."""
    from zoo import tracking

    status = tracking.end_interrupted(stream.run_id) if stream.run_id else ""
    if on_event:
        on_event("interrupted", {"run_id": stream.run_id, "status": status, "task": stream.task})


@contextlib.contextmanager
def interruptible_subprocesses() -> Iterator[None]:
    """Within this block kfp.local's subprocess tasks (no warm server) run by `_run_task`:
    kfp's own leaves a task running when Ctrl-C interrupts it."""
    from kfp.local import subprocess_task_handler as sth

    original = sth.run_local_subprocess
    sth.run_local_subprocess = _run_task
    try:
        yield
    finally:
        sth.run_local_subprocess = original


def _run_task(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
    """kfp's `run_local_subprocess`, but Ctrl-C stops the task: it runs in a session of its
    own (so a terminal's Ctrl-C reaches only this process, which decides), gets SIGTERM (it
    marks its MLflow run KILLED and exits) and is waited for, its last lines logged; SIGKILL
    after warm_spare.STOP_GRACE_S or a second Ctrl-C."""
    import signal
    import subprocess
    import threading

    from pipelines.warm_spare import STOP_GRACE_S

    with subprocess.Popen(
        full_command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, **env_vars} if env_vars else None,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None

        def signal_task(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

        try:
            for line in proc.stdout:
                print(line, end="")
        except KeyboardInterrupt:
            signal_task(signal.SIGTERM)
            timer = threading.Timer(STOP_GRACE_S, signal_task, (signal.SIGKILL,))
            timer.daemon = True
            timer.start()
            try:
                for line in proc.stdout:
                    print(line, end="")
                proc.wait()
            except KeyboardInterrupt:
                signal_task(signal.SIGKILL)
            finally:
                timer.cancel()
            raise
        print("\n")  # as kfp's: the end of a task's lines
        return proc.wait()
