"""The warm server's preload fills per-process caches once, before it forks tasks: each
train task's log_model then skips MLflow's ~1.2 s map of installed modules to distributions,
each ingest of `digits` its 1,797 resizes, each task's first MLflow call the import of
MLflow's tracing set-up, each `genpipe run` the building of its pipeline, each register its registry's
entry-point scan, each log_model MLflow's first save (issue 14 fixed costs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.utils import requirements_utils

from pipelines import warm_server
from zoo import models

REPO = Path(__file__).resolve().parents[2]

CHILD = """
from mlflow.utils import requirements_utils as r
assert r._MODULES_TO_PACKAGES is None, "built before the preload"
from pipelines import warm_server
warm_server._preload()
print("MAP", r._MODULES_TO_PACKAGES is not None and "mlflow" in r._MODULES_TO_PACKAGES)
from zoo.data import sources
print("DIGITS", sources._digits.cache_info().currsize)
from pipelines import local
from zoo import models
print("PREBUILT", sorted(m for m, _ in local._PREBUILT) == sorted(models.names()))
import threading
print("THREADS", len(threading.enumerate()))  # forking with other threads is unsafe
from keras.src.saving import saving_lib as sl
print("SKIPSET", sl.get_attr_skipset("Layer") is sl.get_attr_skipset("Layer"))
from mlflow.tracking._model_registry import utils as ru
print("REGISTRY", ru._model_registry_store_registry is not None)
from zoo import model_logging
print("REQUIREMENTS", model_logging._requirements.cache_info().currsize)
# what a task's or the run fork's first MLflow call imports: nothing new any more
import sys, mlflow
before = set(sys.modules)
mlflow.set_tracking_uri("http://127.0.0.1:9")
print("NEW", sorted(m for m in set(sys.modules) - before if not m.startswith("__autograph")))
"""


def test_preload_builds_mlflows_requirements_map_before_any_fork():
    res = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MAP True" in res.stdout, res.stdout[-2000:]
    assert "DIGITS 1" in res.stdout, res.stdout[-2000:]  # the default data set, made once
    assert "PREBUILT True" in res.stdout, res.stdout[-2000:]  # every model's local pipeline
    assert "THREADS 1" in res.stdout, res.stdout[-2000:]
    assert "SKIPSET True" in res.stdout, res.stdout[-2000:]  # Keras' saving walk, cached
    # MLflow's registry store registry (an entry-point scan) and log_model's dry save, done
    assert "REGISTRY True" in res.stdout, res.stdout[-2000:]
    assert "REQUIREMENTS 1" in res.stdout, res.stdout[-2000:]
    assert "NEW []" in res.stdout, res.stdout[-2000:]  # MLflow's tracing set-up was preloaded


def test_prebuilt_pipelines_are_the_ones_a_run_would_build(tmp_path):
    """What `genpipe run` forks from (built before the fork) compiles to the very YAML of a
    pipeline built for the run, for every model."""
    from kfp import compiler

    from pipelines import local
    from pipelines.factory import build_pipeline

    local.prebuild_pipelines()
    for model in models.names():
        fresh = build_pipeline(model, "cpu", image=None, retries=0)
        a, b = tmp_path / f"{model}-prebuilt.yaml", tmp_path / f"{model}-fresh.yaml"
        compiler.Compiler().compile(local._PREBUILT[(model, 0)], str(a))
        compiler.Compiler().compile(fresh, str(b))
        assert a.read_text() == b.read_text(), model


def test_priming_degrades_gracefully_when_mlflows_private_name_is_gone(monkeypatch):
    """Another MLflow without the private function: the server starts all the same."""
    monkeypatch.delattr(requirements_utils, "_init_modules_to_packages_map")
    warm_server._prime_caches()  # no error

    def broken() -> None:
        raise RuntimeError("changed internals")

    monkeypatch.setattr(requirements_utils, "_init_modules_to_packages_map", broken, raising=False)
    warm_server._prime_caches()  # no error either
