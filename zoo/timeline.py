"""Where a run's seconds go: with GENPIPE_TIMELINE=FILE set, `mark(label)` appends
"<unix time> <pid> <label>" to FILE (0600), from every process of the run (CLI, warm server
forks, tasks). `bench/bench_fixed_costs.py --timeline` turns the marks into a table of
median seconds between consecutive marks. Unset (the default), a mark costs one lookup.
"""

from __future__ import annotations

import os
import time

ENV = "GENPIPE_TIMELINE"


def mark(label: str) -> None:
    """Record that the run reached `label` now (a no-op unless GENPIPE_TIMELINE is set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    # One O_APPEND write per line: lines of concurrent processes do not interleave.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:  # the CLI marks first, so a run fails here before it starts
        from zoo.errors import ConfigError

        raise ConfigError(
            f"{ENV}={path!r}: cannot append to it ({e.strerror}); name a writable file or unset it"
        ) from None
    try:
        os.write(fd, f"{time.time():.4f} {os.getpid()} {label}\n".encode())
    finally:
        os.close(fd)


def read(path: str | os.PathLike[str]) -> list[tuple[float, int, str]]:
    """The marks in `path` as (unix time, pid, label), in the order written."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            t, pid, label = line.rstrip("\n").split(" ", 2)
            out.append((float(t), int(pid), label))
    return out
