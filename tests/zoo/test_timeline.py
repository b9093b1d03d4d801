"""zoo.timeline: marks from several processes land in one file, in order, private."""

import os
import stat
import subprocess
import sys

from zoo import timeline


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
