"""kfp.local (2.17) as embedded mode needs it: conditions on task outputs evaluated, and the
per-task platform calls cheap. Patches apply to this process only; the cluster backend reads
the compiled IR and is unaffected (the compiled YAML is byte-identical: golden test).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


def _patch_kfp_local_conditions() -> None:
    """Make kfp.local (2.17) evaluate `dsl.If(task.outputs[...] == ...)` conditions.

    Its ConditionEvaluator reads a condition's channel `pipelinechannel--<task>-<output>` as a
    parent input, never as the task output it is, so every such condition is False and the
    register step would never run locally. We resolve the channel against task outputs first
    (trying each '-' as the task/output boundary, as task names may contain '-'), and fall
    back to kfp's own resolution. The cluster backend is unaffected: it reads the compiled IR.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as edo

    evaluator = edo.ConditionEvaluator
    if getattr(evaluator, "_genpipe_patched", False):
        return
    original = evaluator._resolve_pipeline_channel

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.removeprefix("pipelinechannel--")
        for i, ch in enumerate(ref):
            if ch != "-":
                continue
            try:
                return io_store.get_task_output(ref[:i], ref[i + 1 :])
            except (ValueError, KeyError):
                continue
        return original(channel_ref, io_store)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)
    evaluator._genpipe_patched = True


_NOT_SINGLE_STEP = (
    "can only be used on single-step components, not pipelines used as components, or "
    "special components like importers."
)


@contextlib.contextmanager
def cheap_task_config() -> Iterator[None]:
    """While building a pipeline: kfp's task config methods without their `inspect.stack()`.

    `PipelineTask.set_cpu_request` & co. (kfp 2.17) call `_ensure_container_spec_exists`,
    which takes `inspect.stack()` only to name the calling method in an error message; that
    reads the source of every frame on the stack (under the CLI's: typer, rich, ...), 20
    times per pipeline. The same check and message with the caller's name from its frame.
    """
    from kfp.dsl import pipeline_task

    cls = pipeline_task.PipelineTask
    original = cls._ensure_container_spec_exists

    def ensure_container_spec_exists(self: Any) -> None:
        if self.container_spec is None:
            raise ValueError(f"{sys._getframe(1).f_code.co_name} {_NOT_SINGLE_STEP}")

    cls._ensure_container_spec_exists = ensure_container_spec_exists
    try:
        yield
    finally:
        cls._ensure_container_spec_exists = original
