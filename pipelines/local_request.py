"""`genpipe run` after its arguments were parsed: in a fork of the warm task server when there
is one, else in this process (pipelines.local does the run itself).

With a warm server (pipelines.warm) the whole run (checks, stack, pipeline, result) is
`run_request` in a fork of that server, which has kfp, MLflow and the models imported
already, and the CLI process only shows the events it streams back; anything else runs the
same `_run_checked` in this process, so the behaviour never depends on the server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from pipelines import warm
from pipelines.local import (
    LocalRunResult,
    OnEvent,
    result_fields,
    result_from_fields,
    run_local,
)
from zoo import timeline
from zoo.settings import state_dir


def run_cli(
    request: dict[str, Any],
    on_event: OnEvent,
    image: str | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> LocalRunResult:
    """`genpipe run` with `request` (the keyword arguments of `run_request`).

    With a usable warm server (GENPIPE_WARM_TASKS on, no `image`) the run is `run_request`
    in a fork of it: this process then imports neither kfp, MLflow, TensorFlow nor minio,
    and receives the run's events (first ("checked", the checked arguments), then the
    pipeline's) and any line the run prints (("output", {"line": ...})) as they happen. When
    this process goes away (Ctrl-C), the server kills the run and its running task. Anything
    else (no server, warm tasks off, containers, a server that refuses the call) runs
    `run_request` here, so the behaviour never depends on the server.

    `meanwhile` (e.g. the display's imports) runs in a thread while this process waits for
    the server to fork and check the request (joined before this returns or raises).
    """
    home = state_dir()
    if image is None and warm.enabled():
        zygote = warm.connect(home)
        timeline.mark("client: connected")
        if zygote is not None:
            waiting = threading.Thread(target=meanwhile or (lambda: None), daemon=True)
            waiting.start()  # while the server forks: this process only waits from here
            try:
                fields = zygote.call(
                    "pipelines.local_request:run_request", on_event=on_event, **request
                )
            except (warm._Unavailable, PermissionError):  # nothing ran: run it here
                warm.adopt(zygote)  # its tasks may still fork from it (release() closes it)
            except BaseException:
                zygote.close()
                raise
            else:
                zygote.close()
                return result_from_fields(fields)
            finally:
                waiting.join()
    else:
        warm.prestart(home)  # the checks (and generate) still answer from the server
    return _run_checked(on_event=on_event, image=image, **request)


def run_request(on_event: OnEvent | None = None, **request: Any) -> dict[str, Any]:
    """`genpipe run` in the warm server (`run_cli`): `_run_checked(**request)` as JSON.

    GENPIPE_WARM_PROFILE=DIR writes its cProfile to DIR/run-<pid>.prof (the tasks' own go
    to DIR/task-<pid>.prof): where the orchestration's seconds go.
    """
    profile_dir = os.environ.get("GENPIPE_WARM_PROFILE")
    if not profile_dir:
        return result_fields(_run_checked(on_event=on_event, **request))
    import cProfile

    with cProfile.Profile() as prof:
        try:
            return result_fields(_run_checked(on_event=on_event, **request))
        finally:
            prof.dump_stats(os.path.join(profile_dir, f"run-{os.getpid()}.prof"))


def _run_checked(
    model: str,
    source: str = "digits",
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
    thresholds: str = "",
    registered_name: str = "",
    test_fraction: float = 0.1,
    resume: str = "",
    experiment: str = "",
    champion_tolerance: float = 0.0,
    retries: int = 0,
    force: bool = False,
    on_event: OnEvent | None = None,
    image: str | None = None,
) -> LocalRunResult:
    """Check the request (`check_run_args`; nothing runs when it is bad), tell `on_event`
    ("checked", its result), then `run_local`. The stack is checked (started) once."""
    timeline.mark("run: in a server fork")
    from genpipe.ops import stack

    if resume:  # the run to resume is looked up in the stack's MLflow and object store
        os.environ.update(stack.ensure_up())
    checked = warm.call(
        "pipelines.local:check_run_args",
        model=model,
        source=source,
        preset=preset,
        overrides=overrides or {},
        thresholds=thresholds,
        registered_name=registered_name,
        test_fraction=test_fraction,
        champion_tolerance=champion_tolerance,
        resume=resume,
    )
    timeline.mark("run: request checked")
    if on_event:
        on_event("checked", checked)
    return run_local(
        model,
        source=source,
        preset=preset,
        overrides=overrides,
        experiment=experiment or None,
        registered_name=checked["registered_name"],
        thresholds=thresholds,
        champion_tolerance=champion_tolerance,
        test_fraction=test_fraction,
        retries=retries,
        start_stack=not resume,
        on_event=on_event,
        image=image,
        resume_from=resume,
        force=force,
    )
