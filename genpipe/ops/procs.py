"""Is a process alive, and what does it run: the one /proc (or `ps`) look-up of operations.

Used by the embedded stack (its servers' pid files), `genpipe gc` (task temp dirs named by
pid) and the warm server (its record file). A pid file alone proves nothing: the process may
have exited (a zombie still holds its pid until its parent reaps it) or the pid may have been
reused by an unrelated program, so callers check both `alive` and a marker in `cmdline`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether `pid` runs: it exists (also as another user's process) and is not a zombie.

    Without /proc (macOS) a zombie cannot be told apart and counts as alive. A caller that
    may be the parent of `pid` reaps it first (a zombie child of ours would otherwise stay).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the pid: not ours, but alive
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie has exited; it awaits its parent
        # "pid (comm) state ...": the state follows the last ')' (comm may hold spaces)
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def cmdline(pid: int) -> str | None:
    """The command line of `pid`, its arguments joined by spaces.

    "" when the process is gone (a zombie's /proc cmdline is empty too); None when it cannot
    be told (unreadable /proc entry, no `ps`): the caller decides whether to trust the pid.
    """
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except FileNotFoundError:
        pass  # gone, or no /proc at all (macOS): `ps` tells which
    except OSError:
        return None
    try:
        out = subprocess.run(
            ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else ""
