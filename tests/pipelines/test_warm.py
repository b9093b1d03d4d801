"""pipelines.warm: kfp.local tasks as forks of a preloaded server, with a fallback to subprocesses."""

# No `from __future__ import annotations`: KFP reads the component functions' real types.
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kfp.local
import pytest
from kfp import dsl
from kfp.local import subprocess_task_handler as sth

from pipelines import warm
from tests.as_user import NOBODY, can_switch_user, run_as
from zoo.errors import GenpipeError

_ORIGINAL = sth.run_local_subprocess


def env_and_parent(name: str) -> str:
    import os

    return f"{os.environ.get(name, '')}|{os.getppid()}"


def fail_with(kind: str) -> str:
    import os

    if kind == "raise":
        raise ValueError("boom from the task")
    os._exit(3)
    return ""


ENV_TASK = dsl.component(env_and_parent, base_image="python:3.11", install_kfp_package=False)
FAIL_TASK = dsl.component(fail_with, base_image="python:3.11", install_kfp_package=False)


def record_pid_and_sleep(path: str, seconds: float) -> None:
    import os
    import time
    from pathlib import Path

    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _server_pid(home: Path) -> int:
    return int(json.loads((home / "warm-server.json").read_text())["pid"])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """One warm server for this module's tests (each start imports TensorFlow & co.)."""
    h = tmp_path_factory.mktemp("warm-home")
    yield h
    warm.stop_server(h)


@pytest.fixture
def local_runner(tmp_path: Path) -> None:
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )


def _command(component) -> list[str]:
    container = component.component_spec.implementation.container
    return [*container.command, *container.args]


def test_parse_command_recognises_our_components_and_refuses_pip_installs():
    from pipelines import factory

    for name, comp in factory.components("python:3.11").items():
        parsed = warm.parse_command(_command(comp))
        assert parsed is not None, name
        source, args = parsed
        assert f"def {name}(" in source
        assert "--function_to_execute" in args and "--executor_input" in args
    with_pip = dsl.component(env_and_parent, base_image="python:3.11", packages_to_install=["x"])
    assert warm.parse_command(_command(with_pip)) is None
    assert warm.parse_command(["python", "-c", "print(1)"]) is None


def test_tasks_run_as_forks_of_the_server_with_the_current_environment(
    home, local_runner, monkeypatch
):
    with warm.warm_tasks(home) as zygote:
        assert zygote is not None and zygote.alive()
        # set after the server started: a task must still see it, as a subprocess would
        monkeypatch.setenv("GENPIPE_TEST_LATE", "late-value")
        value, parent = ENV_TASK(name="GENPIPE_TEST_LATE").output.split("|")
        assert value == "late-value"
        assert int(parent) == zygote.pid  # a fork of the warm session, not a new Python
        assert sth.run_local_subprocess is not _ORIGINAL  # patched within the block only
    assert sth.run_local_subprocess is _ORIGINAL
    assert _wait_gone(zygote.pid)  # the session ends with its client ...
    assert _alive(_server_pid(home))  # ... the server stays for the next run
    with warm.warm_tasks(home) as again:
        assert again.alive() and again.pid != zygote.pid
        _, parent = ENV_TASK(name="HOME").output.split("|")
        assert int(parent) == again.pid


def test_a_failing_task_fails_alone_and_the_session_keeps_serving(home, local_runner, capsys):
    with warm.warm_tasks(home) as zygote:
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="raise")
        assert "ValueError: boom from the task" in capsys.readouterr().out
        with pytest.raises(RuntimeError):
            FAIL_TASK(kind="exit")  # os._exit(3) in the task
        assert zygote.alive()
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]


def test_call_runs_in_the_server_and_reports_user_errors_as_one_line(home):
    warm._prestarted.clear()
    warm.prestart(home)
    try:
        assert warm._prestarted, "no warm server connection"
        assert warm.call(
            "pipelines.local:check_run_args",
            model="vae",
            preset="tiny",
            overrides={"epochs": 3},
            thresholds="",
        ) == {"epochs": 3, "registered_name": "vae-digits"}  # MODEL-DATASET by default
        with pytest.raises(GenpipeError, match="unknown setting.*'nope'"):
            warm.call(
                "pipelines.local:check_run_args",
                model="vae",
                preset="default",
                overrides={"nope": 1},
                thresholds="",
            )
        with pytest.raises(RuntimeError, match="TypeError"):  # a bug, with its traceback
            warm.call("pipelines.local:check_run_args", bogus=1)
    finally:
        for z in warm._prestarted:
            z.close()
        warm._prestarted.clear()


# A `genpipe run` whose task sleeps: killed, it must take its task along.
_CLIENT = """
import sys
from pathlib import Path

import kfp.local
from kfp import dsl

from pipelines import warm
from tests.as_user import NOBODY, can_switch_user, run_as
from tests.pipelines.test_warm import record_pid_and_sleep

kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[3])
task = dsl.component(record_pid_and_sleep, base_image="python:3.11", install_kfp_package=False)
with warm.warm_tasks(Path(sys.argv[1])) as zygote:
    assert zygote is not None
    task(path=sys.argv[2], seconds=120.0)
"""


def test_a_client_that_goes_away_takes_its_running_task_along(home, tmp_path):
    pid_file = tmp_path / "task.pid"
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, str(home), str(pid_file), str(tmp_path / "root")],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        task = int(pid_file.read_text())
        assert _alive(task)
        client.send_signal(signal.SIGKILL)  # Ctrl-C or a kill of `genpipe run`
        assert _wait_gone(task), "the task outlived its client"
    finally:
        client.kill()
        client.wait()
    assert _alive(_server_pid(home))


def test_without_a_server_tasks_fall_back_to_kfp_subprocesses(home, local_runner, monkeypatch):
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")
    with warm.warm_tasks(home) as zygote:
        assert zygote is None
        value, _ = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    with warm.warm_tasks(home) as zygote:
        assert zygote.alive()
        os.kill(zygote.pid, signal.SIGKILL)  # the session dies: later tasks still run
        assert _wait_gone(zygote.pid)
        value, parent = ENV_TASK(name="HOME").output.split("|")
        assert value == os.environ["HOME"]
        assert int(parent) != zygote.pid


def test_changed_code_or_import_environment_gets_a_new_server_and_idle_ones_stop(home, monkeypatch):
    old = _server_pid(home)
    key = warm.code_key()
    monkeypatch.setenv("TF_GENPIPE_TEST_KNOB", "1")  # read at import time by TF-ish code
    assert warm.code_key() != key
    monkeypatch.setenv("GENPIPE_WARM_IDLE_SECONDS", "2")
    zygote = warm.connect(home)
    try:
        new = _server_pid(home)
        assert new != old
        assert _wait_gone(old), "the server of the old key kept running"
        assert zygote.alive()
    finally:
        zygote.close()
    assert _wait_gone(new, seconds=30), "an idle server did not stop"


def test_the_code_key_follows_library_versions_without_importing_metadata(tmp_path, monkeypatch):
    """Another installed version of a preloaded library (its NAME-VERSION.dist-info) is
    another key; an unrelated distribution is not. Computing it imports no package metadata
    machinery (every `genpipe run` pays what it costs)."""
    key = warm.code_key()
    other = tmp_path / "other"
    (other / "unrelated_lib-1.0.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(other))
    assert warm.code_key() == key
    (other / "kfp-9.9.9.dist-info").mkdir()
    assert warm.code_key() != key
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pipelines import warm; warm.code_key(); "
            "print(sorted(m for m in sys.modules if m.startswith('importlib.metadata')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GENPIPE_WARM_TASKS", "maybe"),
        ("GENPIPE_WARM_IDLE_SECONDS", "soon"),
        ("GENPIPE_WARM_IDLE_SECONDS", "0"),
    ],
)
def test_bad_settings_are_refused_naming_the_value_and_start_nothing(
    var, value, tmp_path, monkeypatch
):
    monkeypatch.setenv(var, value)
    with pytest.raises(GenpipeError, match=f"{var}='{value}'"), warm.warm_tasks(tmp_path):
        pass
    assert not (tmp_path / "warm-server.json").exists()


def test_start_in_background_starts_a_server_that_runs_reuse(tmp_path, monkeypatch):
    """`genpipe up` starts the server so the first run finds it warm; off means off."""
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "0")
    assert warm.start_in_background(tmp_path) is False
    assert not (tmp_path / "warm-server.json").exists()
    monkeypatch.setenv("GENPIPE_WARM_TASKS", "1")
    try:
        assert warm.start_in_background(tmp_path) is True
        pid = _server_pid(tmp_path)
        assert _alive(pid)
        zygote = warm.connect(tmp_path)
        try:
            assert zygote.alive() and _server_pid(tmp_path) == pid  # reused, not restarted
        finally:
            zygote.close()
    finally:
        warm.stop_server(tmp_path)


def test_only_the_clients_own_calls_run_in_the_server(home, tmp_path):
    """Same uid, but a function outside warm.CALLS: refused by the server before any fork."""
    made = tmp_path / "made-by-the-server"
    zygote = warm.connect(home)
    try:
        assert zygote is not None and zygote.alive()
        for target, kwargs in [
            ("subprocess:check_output", {"args": ["id"]}),
            ("os:mkdir", {"path": str(made)}),
            ("tests.pipelines.test_warm:record_pid_and_sleep", {"path": str(made), "seconds": 0}),
        ]:
            with pytest.raises(PermissionError, match="not one of the warm server's calls"):
                zygote.call(target, **kwargs)
        assert not made.exists()
        assert zygote.alive()  # the session keeps serving allowed calls
    finally:
        zygote.close()
    # the in-process fallback (no server) applies the same list
    with pytest.raises(PermissionError, match="not one of"):
        warm.call("os:mkdir", path=str(made))
    assert not made.exists()


def test_a_streamed_run_is_checked_in_the_server_before_anything_runs(home, tmp_path):
    """`genpipe run`'s call (pipelines.local_request:run_request, streamed): a bad request is one
    line and nothing ran (no "checked" event, no stack, no run log); refusals still apply."""
    events: list[tuple[str, dict]] = []
    zygote = warm.connect(home)
    try:
        assert zygote is not None and zygote.alive()
        with pytest.raises(GenpipeError, match="unknown setting.*'nope'"):
            zygote.call(
                "pipelines.local_request:run_request",
                on_event=lambda kind, fields: events.append((kind, fields)),
                model="vae",
                preset="tiny",
                overrides={"nope": 1},
            )
        made = tmp_path / "made"
        with pytest.raises(PermissionError, match="not one of the warm server's calls"):
            zygote.call("os:mkdir", on_event=lambda *_: None, path=str(made))
        assert not made.exists() and zygote.alive()
    finally:
        zygote.close()
    assert events == []
    assert not list(home.glob("logs/run-*.log"))


def test_a_streamed_calls_output_becomes_events_in_order():
    """The client side of a streamed call: event lines (even after a partial line), other
    lines as "output", the reply line last."""
    import io

    from pipelines.warm_wire import EVENT, REPLY, _read_stream

    stream = io.StringIO(
        "plain line\n"
        f"half{EVENT}{json.dumps({'kind': 'task_start', 'fields': {'task': 'ingest'}})}\n"
        "\n"
        f"{EVENT}{json.dumps({'kind': 'progress', 'fields': {'epoch': '1'}})}\n"
        f"{REPLY}{json.dumps({'value': 7})}\n"
    )
    got: list[tuple[str, dict]] = []
    reply = _read_stream(stream, lambda kind, fields: got.append((kind, fields)))
    assert json.loads(reply) == {"value": 7}
    assert got == [
        ("output", {"line": "plain line"}),
        ("output", {"line": "half"}),
        ("task_start", {"task": "ingest"}),
        ("progress", {"epoch": "1"}),
    ]


def _intrude(address: str, dir_fd: int | None, marker: str) -> dict[str, str]:
    """As another user: connect to the warm server and ask it to run our code."""
    import socket

    if dir_fd is not None:  # the file socket, reached past the (0700) ancestors of its dir
        address = f"/proc/self/fd/{dir_fd}/{os.path.basename(address)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address)
    except OSError as e:
        s.close()
        return {"connect": f"refused: {e.strerror}"}
    zygote = warm.Zygote(s)
    out = {"connect": "connected", "greeting": "yes" if zygote.alive() else "none"}
    for target, kwargs in [
        ("subprocess:check_output", {"args": ["id"], "text": True}),  # "uid=0(root)..."
        ("os:mkdir", {"path": marker}),
    ]:
        try:
            out[target] = repr(zygote.call(target, **kwargs))
        except Exception as e:  # noqa: BLE001 - every outcome is recorded
            out[target] = f"{type(e).__name__}: {e}"
    zygote.close()
    return out


@pytest.mark.skipif(not can_switch_user(), reason="becoming uid 65534 needs root")
def test_another_user_cannot_reach_the_server_or_run_code_in_it(home, tmp_path_factory):
    zygote = warm.connect(home)
    assert zygote is not None and zygote.alive()
    zygote.close()
    # the running server's key (code_key() moves whenever a source file is edited)
    address = warm._address(home, json.loads((home / "warm-server.json").read_text())["key"])
    drop = tmp_path_factory.mktemp("drop")
    drop.chmod(0o777)  # where the intruder's mkdir would land, run by the server as root
    marker = str(drop / "made-by-the-server")

    # 1. The socket lives in a 0700 dir of ours: another uid cannot even connect.
    got = run_as(NOBODY, _intrude, address, None, marker)
    assert got == {"connect": "refused: Permission denied"}, got

    # 2. Even with the dir and socket opened up, the server checks the peer's uid
    #    (SO_PEERCRED) and hangs up before reading a byte.
    sock_dir = Path(address).parent
    sock_dir.chmod(0o711)
    os.chmod(address, 0o777)
    dir_fd = os.open(sock_dir, os.O_PATH)
    try:
        got = run_as(NOBODY, _intrude, address, dir_fd, marker)
    finally:
        os.close(dir_fd)
        sock_dir.chmod(0o700)
        os.chmod(address, 0o600)
    assert got["connect"] == "connected" and got["greeting"] == "none", got
    assert all(v.startswith("_Unavailable") for k, v in got.items() if ":" in k), got
    assert not Path(marker).exists()
    log = (home / "logs" / "warm-server.log").read_text()
    assert f"refused a connection from uid {NOBODY}" in log


def test_the_socket_is_a_file_in_a_private_dir_unless_the_path_is_too_long(tmp_path):
    short = warm._address(tmp_path, "k")
    assert short.startswith(str(tmp_path.resolve() / "warm") + "/") and short.endswith(".sock")
    long_home = tmp_path / ("x" * 120)
    assert warm._address(long_home, "k").startswith("\0genpipe-warm-")  # peer checks only


@pytest.mark.skipif(not can_switch_user(), reason="becoming uid 65534 needs root")
def test_the_client_never_talks_to_a_server_of_another_user():
    """Someone else listening at our (abstract) address gets no connection, so no task."""
    import secrets
    import socket

    address = "\0genpipe-warm-test-" + secrets.token_hex(6)
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor, as uid 65534
        try:
            os.close(ready_r)
            os.close(hold_w)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(address)
            s.listen(4)
            os.write(ready_w, b"1")
            os.read(hold_r, 1)  # until the test is done
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        assert os.read(ready_r, 1) == b"1", "the impostor could not listen"
        assert warm._try_connect(address) is None
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(address)  # the connection itself works: it is the uid check that refuses
        assert warm._peer_uid(raw) == NOBODY
        raw.close()
    finally:
        os.close(hold_w)  # the impostor exits
        os.waitpid(pid, 0)
        os.close(ready_r)
