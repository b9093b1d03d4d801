"""pipelines.local_kfp.cheap_task_config: kfp's task config calls without `inspect.stack()`,
with the same compiled pipeline and the same error."""

# No `from __future__ import annotations`: KFP reads the component functions' real types.
import inspect

import pytest
from kfp import compiler, dsl

from pipelines.factory import build_pipeline
from pipelines.local_kfp import cheap_task_config


def test_same_compiled_yaml_without_inspecting_the_stack(tmp_path, monkeypatch):
    plain = tmp_path / "plain.yaml"
    compiler.Compiler().compile(build_pipeline("vae", "gke"), str(plain))

    def no_stack(*args, **kwargs):
        raise AssertionError("inspect.stack() called while building")

    monkeypatch.setattr(inspect, "stack", no_stack)  # what kfp's own check calls, per method
    with cheap_task_config():
        cheap = build_pipeline("vae", "gke")
    monkeypatch.undo()
    out = tmp_path / "cheap.yaml"
    compiler.Compiler().compile(cheap, str(out))
    assert out.read_bytes() == plain.read_bytes()


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _noop() -> str:
    return ""


@dsl.pipeline
def _inner() -> None:
    _noop()


def _error(cheap: bool) -> str:
    def outer() -> None:
        _inner().set_cpu_request("1")  # a pipeline used as a component: no container spec

    with pytest.raises(ValueError) as e:
        if cheap:
            with cheap_task_config():
                dsl.pipeline(outer)
        else:
            dsl.pipeline(outer)
    return str(e.value)


def test_same_error_for_a_task_without_a_container():
    assert _error(cheap=True) == _error(cheap=False)
    assert _error(cheap=True).startswith("set_cpu_request can only be used on single-step")
