"""Process-tree helpers for tests that kill a running task (tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def default_sigint() -> None:
    """Popen preexec_fn: SIGINT back to its default in the child, so Python turns it into
    KeyboardInterrupt (Ctrl-C). A suite started in the background by a non-interactive shell
    (`make test &`) inherits SIGINT ignored, and Python keeps an inherited SIG_IGN."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
