"""Helpers shared by the component `run()` functions."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from zoo.settings import state_dir


def cache_dir() -> Path:
    """Local cache for fetched datasets: GENPIPE_CACHE, else the state dir (embedded), else tmp."""
    if os.environ.get("GENPIPE_CACHE"):
        return Path(os.environ["GENPIPE_CACHE"])
    home = state_dir()
    if home.is_dir() and os.access(home, os.W_OK):
        return home / "cache"
    return Path(tempfile.gettempdir()) / "genpipe-cache"


def read_dataset_artifact(path: str | Path) -> dict[str, Any]:
    """The small JSON the ingest component writes into its KFP Dataset artifact."""
    return json.loads(Path(path).read_text())


def fetch_dataset(manifest_uri: str) -> Any:
    """Download (or reuse from cache) the dataset behind a manifest URI."""
    from zoo.data import fetch
    from zoo.storage import ObjectStore

    return fetch(manifest_uri, ObjectStore.from_env(), cache_dir())


def registered_name(client: Any, mlflow_run_id: str, name: str) -> str:
    """`name`, or (the pipeline's default, "") MODEL-DATASET from the run's model and source."""
    if name:
        return name
    from zoo import names
    from zoo.data.sources import default_registered_name

    run = client.get_run(mlflow_run_id)
    return default_registered_name(
        run.data.tags[names.TAG_MODEL], run.data.params[names.PARAM_SOURCE]
    )
