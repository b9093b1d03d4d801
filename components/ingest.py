"""Ingest: load a source, validate it, split deterministically, publish TFRecords + manifest.

The published dataset is content-addressed (by the sha256 fingerprint of its content), so
re-running ingest on unchanged data writes nothing, and training caches keyed on the
fingerprint (not on the source string, which KFP caching would otherwise trust blindly).
"""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
from typing import Any, NamedTuple

from kfp.dsl import Dataset, Output


def run(
    source: str,
    model: str,
    experiment: str,
    pipeline_run_id: str,
    test_fraction: float = 0.1,
    shards: int = 4,
    preset: str = "default",
    overrides: str = "{}",
    platform_overrides: str = "{}",
    registered_name: str = "",
    force: bool = False,
    thresholds: str = "",
    champion_tolerance: float = 0.0,
) -> dict[str, Any]:
    """Ingest `source` for `model`; returns manifest URI, fingerprint, the MLflow run id and
    `unchanged_since`: the champion's version when it was trained on this very data, config
    (`preset` + `platform_overrides` + `overrides`) and code, so the pipeline skips training;
    "" otherwise, or with `force`.

    The run's request is checked here, once, before any I/O (zoo.request.RunRequest, errors
    naming the pipeline parameter), and recorded on the MLflow run (components.common
    `record_run`): the later tasks read the resolved config, thresholds and registered name
    from there.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from components.common import run_request_tags
    from zoo import config as cfgmod
    from zoo import models, names, tracking, unchanged
    from zoo.data import RawText, load_source, publish, split
    from zoo.errors import DataError
    from zoo.request import PARAMS, RunRequest
    from zoo.storage import ObjectStore

    # The profile's hardware defaults under the run's own overrides: the config train uses.
    merged = cfgmod.merge_overrides(platform_overrides, overrides)
    request = RunRequest(
        model,
        source=source,
        preset=preset,
        overrides=merged,
        thresholds=thresholds,
        registered_name=registered_name,
        test_fraction=test_fraction,
        champion_tolerance=champion_tolerance,
    )
    checked = request.checked(PARAMS)  # one line naming the bad parameter, before any I/O
    family = models.get(model).family
    # Its hash goes on the run and, via register, on the model version.
    config = unchanged.config_hash(model, cfgmod.to_dict(checked.config))
    c = tracking.client()
    with ThreadPoolExecutor(2, thread_name_prefix="genpipe-ingest") as pool:
        # While the data loads and publishes: git (the commit and the code's version: 2-3 git
        # processes) and MLflow (is there a run already?), reads only: the run is created once
        # the data passed its check.
        versions = pool.submit(_code_versions)
        looked = pool.submit(tracking.find_run, c, experiment, pipeline_run_id)
        store = ObjectStore.from_env()
        store.ensure_bucket()
        raw = load_source(source, store)  # validated there: the one check of the data
        kind = "text" if isinstance(raw, RawText) else "image"
        if kind != family:
            raise DataError(
                f"source {source!r} holds {kind} data but model {model!r} trains on {family} data"
            )
        manifest = publish(split(raw, test_fraction), store, source=source, shards=shards)
        commit, code = versions.result()
    fingerprint = manifest["fingerprint"]
    run = tracking.get_or_create(
        c, experiment, pipeline_run_id, model, found=looked.result(), git=commit
    )
    run_id = run.info.run_id
    unchanged_since = ""
    with tracking.run_status(run_id, run=run) as status:
        # The run as found or created: its params (none on a new run) and artifact location
        # need no second read.
        logger = tracking.RunLogger(
            c, run_id, params=run.data.params, artifact_uri=run.info.artifact_uri
        )
        ds = MetaDataset(
            source=_source_for_mlflow(manifest["uri"]),
            name=source,
            digest=fingerprint[: names.MLFLOW_DIGEST_CHARS],
        )
        name = checked.registered_name
        # Four independent requests, at once: one round trip instead of four.
        with ThreadPoolExecutor(4, thread_name_prefix="genpipe-ingest") as pool:
            done = [
                # One request: the dataset's params, its tags and the checked request.
                pool.submit(
                    logger.log,
                    params={
                        names.PARAM_SOURCE: source,
                        names.PARAM_FINGERPRINT: fingerprint,
                        names.PARAM_TEST_FRACTION: test_fraction,
                        **{
                            f"{names.DATASET_PARAM_PREFIX}{split_name}_count": s["count"]
                            for split_name, s in manifest["splits"].items()
                        },
                    },
                    tags={
                        names.TAG_FINGERPRINT: fingerprint,
                        names.TAG_CONFIG: config,
                        names.TAG_CODE: code,
                        **run_request_tags(checked),
                    },
                ),
                pool.submit(logger.json, manifest, "dataset/manifest.json"),
                # Through the client, not `with mlflow.start_run(...)`: leaving that block
                # would end the run FINISHED before training even starts (tracking.run_status).
                pool.submit(
                    c.log_inputs,
                    run_id,
                    [
                        DatasetInput(
                            ds._to_mlflow_entity(),
                            [InputTag(MLFLOW_DATASET_CONTEXT, "training")],
                        )
                    ],
                ),
            ]
            found = (
                None
                if force
                else pool.submit(unchanged.unchanged_champion, c, name, fingerprint, config, code)
            )
            for d in done:
                d.result()
        version = found.result() if found else None
        if version:
            # The pipeline's condition skips train, evaluate and register: this task is the
            # last one, so it ends the run FINISHED.
            unchanged_since = version
            logger.tags({names.TAG_UNCHANGED: version})
            status.final = True
            print(
                f"unchanged since champion v{version} of {name} (same data, config and code): "
                "training skipped (force retrains anyway)",
                flush=True,
            )
    return {
        "manifest_uri": manifest["uri"],
        "fingerprint": fingerprint,
        "mlflow_run_id": run_id,
        "manifest": manifest,
        "unchanged_since": unchanged_since,
    }


def _code_versions() -> tuple[str, str]:
    """(the commit, zoo.unchanged.code_version of it): what the run and its skip check record."""
    from zoo import tracking, unchanged

    commit = tracking.git_commit()
    return commit, unchanged.code_version(commit)


def _source_for_mlflow(uri: str) -> Any:
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    # MLflow has no generic S3 dataset source class outside its Spark/Delta integrations;
    # an URL-typed source records the location verbatim.
    return HTTPDatasetSource(url=uri)


def ingest(
    source: str,
    model: str,
    experiment: str,
    pipeline_run_id: str,
    test_fraction: float,
    dataset: Output[Dataset],
    preset: str = "default",
    overrides: str = "{}",
    platform_overrides: str = "{}",
    registered_name: str = "",
    force: bool = False,
    thresholds: str = "",
    champion_tolerance: float = 0.0,
) -> NamedTuple("IngestOutputs", [("mlflow_run_id", str), ("unchanged_since", str)]):
    """KFP interface of ingest (imports inside: KFP runs this function's source alone).

    Outputs what the pipeline's DAG needs: the MLflow run (every later task reads and writes
    it), `unchanged_since` (its "changed" condition) and the dataset artifact.
    """
    import json
    from collections import namedtuple

    from components.ingest import run

    out = run(
        source,
        model,
        experiment,
        pipeline_run_id,
        test_fraction,
        preset=preset,
        overrides=overrides,
        platform_overrides=platform_overrides,
        registered_name=registered_name,
        force=force,
        thresholds=thresholds,
        champion_tolerance=champion_tolerance,
    )
    with open(dataset.path, "w") as f:
        json.dump({"manifest_uri": out["manifest_uri"], "fingerprint": out["fingerprint"]}, f)
    dataset.metadata.update(
        {"fingerprint": out["fingerprint"], "manifest_uri": out["manifest_uri"], "source": source}
    )
    return namedtuple("IngestOutputs", ["mlflow_run_id", "unchanged_since"])(
        out["mlflow_run_id"], out["unchanged_since"]
    )
