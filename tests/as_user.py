"""Run a test's probe as another, unprivileged local user (the hostile neighbour)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

NOBODY = 65534  # `nobody`: no home, no groups, owns nothing of ours


def can_switch_user() -> bool:
    """Becoming another uid needs root (the test suite's CI runs as root)."""
    return os.geteuid() == 0


def run_as(user: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a forked child as `user` (None: our own uid) with an empty environment;
    returns its JSON-able result, or raises AssertionError with the child's exception.

    Forked, not exec'd: the interpreter may live where the other user cannot read it (e.g. a
    pyenv under /root), and whatever `fn` needs is already imported.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        result = json.dumps({"error": "no result"})
        try:
            os.close(read_fd)
            os.environ.clear()  # none of our keys or endpoints
            os.environ["GRPC_VERBOSITY"] = "NONE"  # refusals are expected, not log-worthy
            if user is not None:
                os.setgroups([])
                os.setgid(user)
                os.setuid(user)
            result = json.dumps({"ok": fn(*args)})
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            result = json.dumps({"error": f"{type(e).__name__}: {e}"})
        finally:
            with os.fdopen(write_fd, "w") as w:
                w.write(result)
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        reply = json.loads(r.read() or '{"error": "the child died"}')
    os.waitpid(pid, 0)
    assert "ok" in reply, reply["error"]
    return reply["ok"]
