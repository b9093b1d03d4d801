"""Register: record a blessed model as an MLflow model version and move the aliases."""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
from typing import Any, NamedTuple


def run(
    registered_name: str,
    mlflow_run_id: str,
    better_than_champion: bool,
    champion_version: str,
    pipeline_run_id: str,
) -> dict[str, Any]:
    """Register the run's logged model under `registered_name`; promote when the evaluator said so."""
    import dataclasses

    from components import common
    from zoo import models, tracking
    from zoo.registration import TAG_CODE, TAG_CONFIG, TAG_PRIMARY, register, standard_tags

    c = tracking.client()
    registered_name = common.registered_name(c, mlflow_run_id, registered_name)
    tracking.check_registered_name(registered_name, "registered_name")
    run = c.get_run(mlflow_run_id)
    primary = run.data.tags.get(TAG_PRIMARY, "=nan")
    metric, _, value = primary.partition("=")
    tags = standard_tags(
        run.data.tags.get(tracking.TAG_DATASET, "unknown"),
        pipeline_run_id,
        run.data.tags.get(tracking.TAG_GIT, "unknown"),
        metric,
        float(value or "nan"),
        # Recorded by ingest: with data and code, what a later run compares to skip training.
        config=run.data.tags.get(TAG_CONFIG, ""),
        code=run.data.tags.get(TAG_CODE, ""),
    )
    result = register(
        c,
        registered_name,
        mlflow_run_id,
        better_than_champion=better_than_champion,
        expected_champion=champion_version,
        tags=tags,
        lower_is_better=models.get(run.data.tags.get(tracking.TAG_MODEL, "")).lower_is_better,
    )
    tracking.RunLogger(c, mlflow_run_id).tags(
        {"genpipe.registered_version": result.version, "genpipe.aliases": ",".join(result.aliases)}
    )
    return dataclasses.asdict(result)


def register(
    registered_name: str,
    mlflow_run_id: str,
    better_than_champion: bool,
    champion_version: str,
    pipeline_run_id: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("aliases", str)]):
    """KFP interface of register (imports inside: KFP runs this function's source alone)."""
    from collections import namedtuple

    from components.register import run
    from zoo import tracking

    with tracking.run_status(mlflow_run_id, final=True):  # the pipeline's last task
        out = run(
            registered_name, mlflow_run_id, better_than_champion, champion_version, pipeline_run_id
        )
    print(f"registered {out['name']} v{out['version']} aliases={out['aliases']}: {out['reason']}")
    return namedtuple("RegisterOutputs", ["version", "aliases"])(
        out["version"], ",".join(out["aliases"])
    )
