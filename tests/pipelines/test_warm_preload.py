"""The warm server's preload fills per-process caches once, before it forks tasks: each
train task's log_model then skips MLflow's ~1.2 s map of installed modules to distributions,
each ingest of `digits` its 1,797 resizes (issue 14 fixed costs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.utils import requirements_utils

from pipelines import warm_server

REPO = Path(__file__).resolve().parents[2]

CHILD = """
from mlflow.utils import requirements_utils as r
assert r._MODULES_TO_PACKAGES is None, "built before the preload"
from pipelines import warm_server
warm_server._preload()
print("MAP", r._MODULES_TO_PACKAGES is not None and "mlflow" in r._MODULES_TO_PACKAGES)
from zoo.data import sources
print("DIGITS", sources._digits.cache_info().currsize)
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


def test_priming_degrades_gracefully_when_mlflows_private_name_is_gone(monkeypatch):
    """Another MLflow without the private function: the server starts all the same."""
    monkeypatch.delattr(requirements_utils, "_init_modules_to_packages_map")
    warm_server._prime_caches()  # no error

    def broken() -> None:
        raise RuntimeError("changed internals")

    monkeypatch.setattr(requirements_utils, "_init_modules_to_packages_map", broken, raising=False)
    warm_server._prime_caches()  # no error either
