"""Helpers shared by the component `run()` functions."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RecordedRun:
    """The run as ingest checked it (zoo.request.CheckedRun), read back from the MLflow run."""

    model: str
    preset: str
    #: the profile's train_defaults with the run's own overrides over them (JSON values)
    overrides: dict[str, Any]
    #: the model's resolved, typed config (preset + overrides)
    config: Any
    #: blessing thresholds: metric -> ("max" | "min", bound)
    thresholds: dict[str, tuple[str, float]]
    #: the registered model name (`registered_name`, else MODEL-DATASET)
    registered_name: str
    #: how much worse than the champion (a fraction of its metric) still counts as better
    champion_tolerance: float = 0.0


def record_run(logger: Any, checked: Any) -> None:
    """Record a checked run (zoo.request.CheckedRun) on its MLflow run for the later tasks."""
    logger.tags(run_request_tags(checked))


def run_request_tags(checked: Any) -> dict[str, str]:
    """The tag recording a checked run (zoo.request.CheckedRun) for the later tasks.

    One JSON tag (a few hundred characters: MLflow keeps up to 8,000), so a task reads it
    with the run it fetches anyway; rewritten with the same value by a retried ingest.
    """
    from zoo import config as cfgmod
    from zoo import names

    request = checked.request
    record = {
        "model": request.model,
        "preset": request.preset,
        "overrides": dict(request.overrides),
        "config": cfgmod.to_dict(checked.config),
        "thresholds": {k: list(v) for k, v in checked.thresholds.items()},
        "registered_name": checked.registered_name,
        "champion_tolerance": request.champion_tolerance,
    }
    return {names.TAG_RUN_REQUEST: json.dumps(record, sort_keys=True)}


def recorded_run(client: Any, mlflow_run_id: str, run: Any = None) -> RecordedRun:
    """What ingest recorded on the run (`record_run`): the later tasks' one source of the
    run's config, thresholds and registered name, checked once, at ingest. `run`: the MLflow
    run when the caller already read it (saves a round trip)."""
    from zoo import config as cfgmod
    from zoo import models, names
    from zoo.errors import GenpipeError

    run = run if run is not None else client.get_run(mlflow_run_id)
    raw = run.data.tags.get(names.TAG_RUN_REQUEST)
    if not raw:
        raise GenpipeError(
            f"MLflow run {mlflow_run_id} has no tag {names.TAG_RUN_REQUEST}: it was not "
            "created by this version's ingest task; valid: a run of this pipeline's ingest"
        )
    record = json.loads(raw)
    cls = models.get(record["model"])
    where = f"MLflow run {mlflow_run_id} {names.TAG_RUN_REQUEST}"
    return RecordedRun(
        model=record["model"],
        preset=record["preset"],
        overrides=record["overrides"],
        config=cfgmod.from_dict(cls.config_cls, record["config"], where),
        thresholds={k: (op, float(v)) for k, (op, v) in record["thresholds"].items()},
        registered_name=record["registered_name"],
        # absent from records of an ingest before the tolerance was checked there: the default
        champion_tolerance=float(record.get("champion_tolerance", 0.0)),
    )
