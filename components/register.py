"""Register: record a blessed model as an MLflow model version and move the aliases."""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
from typing import Any


def run(
    mlflow_run_id: str,
    better_than_champion: bool,
    champion_version: str,
    pipeline_run_id: str,
    mlflow_run: Any = None,
) -> dict[str, Any]:
    """Register the run's logged model under its registered name (checked and recorded by
    ingest); promote when the evaluator said so. `mlflow_run`: the MLflow run when the caller
    already read it (saves a round trip).

    Register is the pipeline's last task: once the aliases are set, the run's outcome tags
    and its end (FINISHED, zoo.tracking.finish) go out together; an error after that still
    marks the run FAILED in the caller's `run_status`.
    """
    import dataclasses

    from components.common import recorded_run
    from zoo import models, names, tracking
    from zoo.registration import register, standard_tags

    c = tracking.client()
    # read once: recorded_run and register use it too
    run = mlflow_run if mlflow_run is not None else c.get_run(mlflow_run_id)
    registered_name = recorded_run(c, mlflow_run_id, run).registered_name
    recorded = run.data.tags
    cls = models.get(recorded.get(names.TAG_MODEL, ""))
    tags = standard_tags(
        recorded.get(names.TAG_FINGERPRINT, "unknown"),
        pipeline_run_id,
        recorded.get(names.TAG_GIT, "unknown"),
        # The primary metric: its name is the model's, its value what evaluate logged.
        cls.primary_metric,
        run.data.metrics.get(cls.primary_metric, float("nan")),
        # Recorded by ingest: with data and code, what a later run compares to skip training.
        config=recorded.get(names.TAG_CONFIG, ""),
        code=recorded.get(names.TAG_CODE, ""),
    )
    result = register(
        c,
        registered_name,
        mlflow_run_id,
        better_than_champion=better_than_champion,
        expected_champion=champion_version,
        tags=tags,
        lower_is_better=cls.lower_is_better,
        run=run,
        # where `genpipe run` reads the outcome: recorded while the lock is released
        record=lambda result: _record_and_finish(c, mlflow_run_id, result),
    )
    return dataclasses.asdict(result)


def _record_and_finish(c: Any, mlflow_run_id: str, result: Any) -> None:
    """The outcome's tags on the run and the run's end, in one round trip."""
    from concurrent.futures import ThreadPoolExecutor

    from zoo import names, tracking

    tags = {
        names.TAG_REGISTERED_VERSION: result.version,
        names.TAG_ALIASES: ",".join(result.aliases),
    }
    with ThreadPoolExecutor(2, thread_name_prefix="genpipe-register") as pool:
        done = [
            pool.submit(tracking.RunLogger(c, mlflow_run_id).tags, tags),
            pool.submit(tracking.finish, mlflow_run_id),
        ]
        for d in done:
            d.result()


def register(
    mlflow_run_id: str,
    better_than_champion: bool,
    champion_version: str,
    pipeline_run_id: str,
) -> None:
    """KFP interface of register (imports inside: KFP runs this function's source alone).

    The pipeline's last task: the version and aliases it set are on the MLflow run (tags
    genpipe.registered_version, genpipe.aliases), where `genpipe run` reads them.
    """
    from components.register import run
    from zoo import tracking

    with tracking.run_status(mlflow_run_id, final=True) as status:  # the pipeline's last task
        out = run(
            mlflow_run_id,
            better_than_champion,
            champion_version,
            pipeline_run_id,
            mlflow_run=status.run,
        )
    print(f"registered {out['name']} v{out['version']} aliases={out['aliases']}: {out['reason']}")
