"""zoo.timeline: marks from several processes land in one file, in order, private."""

import os
import stat
import subprocess
import sys

import pytest

from zoo import timeline
from zoo.errors import ConfigError


def test_marks_append_from_processes_in_order_to_a_private_file(tmp_path, monkeypatch):
    path = tmp_path / "tl.txt"
    monkeypatch.setenv(timeline.ENV, str(path))
    timeline.mark("parent: first")
    code = "from zoo import timeline; timeline.mark('child: one'); timeline.mark('child: two')"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    timeline.mark("parent: last")
    marks = timeline.read(path)
    assert [m[2] for m in marks] == ["parent: first", "child: one", "child: two", "parent: last"]
    assert [m[0] for m in marks] == sorted(m[0] for m in marks)
    assert {m[1] for m in marks} - {os.getpid()}  # the child's own pid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unset_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(timeline.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    timeline.mark("nothing")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_file_is_one_error_naming_the_variable(tmp_path, monkeypatch):
    path = tmp_path / "no-such-dir" / "tl.txt"
    monkeypatch.setenv(timeline.ENV, str(path))
    with pytest.raises(ConfigError, match=r"GENPIPE_TIMELINE=.*no-such-dir.*writable file"):
        timeline.mark("x")
    assert not path.parent.exists()


def test_cli_run_with_unwritable_timeline_fails_before_anything_runs(tmp_path):
    env = {**os.environ, timeline.ENV: str(tmp_path / "nope" / "tl.txt")}
    env["GENPIPE_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "genpipe", "run", "vae", "--preset", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "GENPIPE_TIMELINE=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "home").exists()  # no stack started, nothing written
