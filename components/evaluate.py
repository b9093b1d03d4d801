"""Evaluate: held-out metrics, figures, an HTML report, and the pass/fail blessing.

The current champion (if any, and if it takes the same input shape) is compared on the same
held-out split, so the comparison is apples to apples: re-scored, or, when its own recorded
evaluation had the same `zoo.evaluation.evaluation_key` (same data, split, seed, evaluation
code and libraries), its recorded primary metric is reused, as re-scoring would repeat it.
"""

# No `from __future__ import annotations` here: KFP reads the component signature's real types.
import base64
import html
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def run(
    manifest_uri: str,
    model_dir: str,
    mlflow_run_id: str,
    report_path: str | None = None,
    mlflow_run: Any = None,
) -> dict[str, Any]:
    """Score the trained model in `model_dir` and decide its blessing.

    The thresholds, the registered name (whose champion it is compared with) and the champion
    tolerance are what ingest checked and recorded on the MLflow run (components.common
    `recorded_run`).
    `mlflow_run`: that run when the caller already read it (saves a round trip).
    """
    from components.common import fetch_dataset, recorded_run
    from zoo import models, names, timeline, tracking
    from zoo.blessing import decide
    from zoo.evaluation import evaluate, evaluation_key, prepare
    from zoo.train import load_model

    timeline.mark("evaluate: start")
    c = tracking.client()
    run_info = mlflow_run if mlflow_run is not None else c.get_run(mlflow_run_id)
    rec = recorded_run(c, mlflow_run_id, run_info)
    data = fetch_dataset(manifest_uri)
    with ThreadPoolExecutor(max_workers=2) as ahead:
        # In threads, each the same calls as in sequence, only the waits overlap: while the
        # model loads, the champion's registry entry and run (MLflow round trips); while the
        # held-out pass runs, what the rest of the evaluation needs besides the model (image
        # models: the decoded splits, the cached feature extractor downloaded and loaded),
        # which evaluate waits for where it needs it.
        champion = ahead.submit(_champion_record, c, rec.registered_name, mlflow_run_id)
        model, meta = load_model(model_dir)
        cls = models.get(meta["model"])
        timeline.mark("evaluate: model loaded")
        t0 = time.perf_counter()
        ready = ahead.submit(prepare, cls.family, data, cls.heldout_split)
        result = evaluate(model, data, seed=0)
        ready.result()
        timeline.mark("evaluate: evaluated")
        # Wall time of the evaluation itself (sampling, feature extractor, metrics): what the
        # pipeline-overhead benchmark subtracts as work, as train_wall_s for training.
        metrics = {**result.metrics, "eval_wall_s": time.perf_counter() - t0}
    key = evaluation_key(
        meta["model"],
        data.fingerprint,
        cls.heldout_split,
        0,
        run_info.data.tags.get(names.TAG_CODE, ""),
        result.key_parts,
    )

    # The files under evaluation/ and, once decided, the metrics and the verdict's tags (one
    # request): each is a round trip, none waits for another. The figures and texts do not
    # depend on the verdict, so they are encoded and uploaded while the champion is scored;
    # the report (which embeds the figures and the verdict) last.
    n_files = len(result.images) + len(result.texts) + 1
    with (
        ThreadPoolExecutor(max_workers=n_files + 1) as pool,
        tempfile.TemporaryDirectory(prefix="genpipe-evaluation-") as tmp,
    ):
        put = _Uploader(c, run_info.info.artifact_uri, "evaluation", Path(tmp))
        sent = [pool.submit(put, f"{n}.txt", t.encode()) for n, t in result.texts.items()]
        encoded = {
            name: pool.submit(put.png, name, arr, 16 if name != "samples" else None)
            for name, arr in result.images.items()
        }
        t0 = time.perf_counter()
        champ_value, champ_version, champ_note = _score_champion(
            c, rec.registered_name, mlflow_run_id, meta, data, cls, key, champion.result
        )
        metrics["eval_champion_wall_s"] = time.perf_counter() - t0
        blessing = decide(
            metrics,
            rec.thresholds,
            cls.primary_metric,
            cls.lower_is_better,
            champion_value=champ_value,
            champion_version=champ_version,
            tolerance=rec.champion_tolerance,
        )
        if champ_note:
            blessing.reasons.append(champ_note)

        timeline.mark("evaluate: champion scored")
        logger = tracking.RunLogger(c, mlflow_run_id)
        logged = dict(metrics)  # one batch: the metrics, the champion's score, the verdict
        if champ_value is not None:
            logged[f"champion_{cls.primary_metric}"] = champ_value
        logged["blessed"] = float(blessing.blessed)
        tags = {
            names.TAG_BLESSED: str(blessing.blessed).lower(),
            # what `genpipe run` prints when not blessed, e.g. "test_fid 61.2 > max 60"
            names.TAG_NOT_BLESSED: "; ".join(blessing.failures),
            names.TAG_PRIMARY: names.primary_tag(cls.primary_metric, blessing.value),
        }
        if key:  # what a later run compares with when this model is its champion
            tags[names.TAG_EVAL_KEY] = key
        batch = pool.submit(logger.log, metrics=logged, tags=tags)
        pngs = {name: f.result() for name, f in encoded.items()}
        report = render_report(meta["model"], metrics, blessing.to_dict(), pngs, result.texts)
        sent.append(pool.submit(put, "report.html", report.encode()))
        for f in [batch, *sent]:
            f.result()
    if report_path:
        Path(report_path).write_text(report)
    timeline.mark("evaluate: logged")
    return {"metrics": metrics, "blessing": blessing.to_dict()}


class _Uploader:
    """Uploads files under `where` in a run's artifacts, through the run's artifact repository
    (its URI from the run already read, as `log_artifact` would after reading the run again);
    each upload retried through outages. Thread-safe: one temporary file per name."""

    def __init__(self, c: Any, artifact_uri: str, where: str, tmp: Path) -> None:
        from zoo import tracking

        self.repo = tracking.artifact_repo(artifact_uri, c.tracking_uri)
        self.where, self.tmp = where, tmp

    def __call__(self, name: str, data: bytes) -> bytes:
        from zoo import tracking

        path = self.tmp / name
        path.write_bytes(data)
        what = f"upload {self.where}/{name}"
        tracking.retrying(what, self.repo.log_artifact, str(path), self.where)
        return data

    def png(self, name: str, images: Any, cols: int | None) -> bytes:
        """Encode `images` as one PNG grid, upload it as NAME.png; returns the PNG."""
        from zoo import grids

        return self(f"{name}.png", grids.grid_png(images, cols=cols))


def _champion_record(c: Any, name: str, run_id: str) -> tuple[Any, Any]:
    """(the ModelVersion of `name`@champion or None, its run's data or None): the run is not
    read without a champion or when the champion is run `run_id` itself."""
    from zoo import registration

    champ = registration.champion(c, name)
    if champ is None or champ.run_id == run_id:
        return champ, None
    return champ, c.get_run(champ.run_id).data


def _score_champion(
    c: Any,
    name: str,
    run_id: str,
    meta: dict,
    data: Any,
    cls: Any,
    key: str = "",
    looked_up: Callable[[], tuple[Any, Any]] | None = None,
) -> tuple:
    """(value, version, note) of the champion on this data; (None, "", note) if not comparable.

    `key`: this evaluation's `evaluation_key`; when the champion's run recorded the same one,
    its recorded primary metric is what re-scoring would give (same model file, data, split,
    seed, code and libraries), and is used as it is; otherwise the champion is re-scored.
    `looked_up`: returns `_champion_record(c, name, run_id)` as read ahead (run's caller
    reads it while the model loads); by default it is read now.
    """
    import math

    from zoo import names, registration, tracking
    from zoo.evaluation import evaluate
    from zoo.train import load_model

    champ, recorded = looked_up() if looked_up else _champion_record(c, name, run_id)
    if champ is None:
        return None, "", ""
    if champ.run_id == run_id:  # a retried evaluate after this run was already promoted
        return None, "", "this run is already the champion"
    if key:
        value = recorded.metrics.get(cls.primary_metric)
        if (
            recorded.tags.get(names.TAG_EVAL_KEY) == key
            and value is not None
            and math.isfinite(value)
        ):
            return (
                value,
                champ.version,
                f"champion v{champ.version}'s {cls.primary_metric} as its own evaluation recorded "
                "it (same held-out data, evaluation code and seed: re-scoring would repeat it)",
            )
    with tempfile.TemporaryDirectory(prefix="genpipe-champion-") as tmp:
        champ_dir = tracking.retrying(  # MLflow's artifact API: retried through outages here
            "download champion",
            registration.download_model_dir,
            c,
            name,
            champ.version,
            Path(tmp) / "model",
        )
        champ_model, champ_meta = load_model(champ_dir)
    if (
        champ_meta["model"] != meta["model"]
        or champ_meta["data_spec"]["shape"] != meta["data_spec"]["shape"]
    ):
        return (
            None,
            champ.version,
            f"champion v{champ.version} ({champ_meta['model']}, shape {champ_meta['data_spec']['shape']}) "
            "is not comparable: decided on thresholds alone",
        )
    value = evaluate(champ_model, data, seed=0).metrics[cls.primary_metric]

    return value, champ.version, ""


def render_report(
    model: str, metrics: dict, blessing: dict, pngs: dict, texts: dict | None = None
) -> str:
    """A self-contained HTML report (images inline) for the KFP UI and MLflow."""
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items())
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in blessing["reasons"])
    figs = "".join(
        f"<h3>{html.escape(n)}</h3><img alt='{html.escape(n)}' src='data:image/png;base64,{base64.b64encode(p).decode()}'/>"
        for n, p in pngs.items()
    )
    figs += "".join(
        f"<h3>{html.escape(n)}</h3><pre style='white-space:pre-wrap'>{html.escape(t)}</pre>"
        for n, t in (texts or {}).items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(model)} evaluation</title></head>"
        f"<body style='font-family:sans-serif'><h1>{html.escape(model)}: {verdict}</h1>"
        f"<table border='1' cellpadding='4'><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"<p>Units: as documented by the model (the VAE: nats per image); lower is better "
        f"for losses and likelihood bounds.</p><h2>Blessing</h2><ul>{reasons}</ul>{figs}</body></html>"
    )


def evaluate(
    mlflow_run_id: str,
    dataset: Input[Dataset],
    trained_model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> NamedTuple(
    "EvaluateOutputs",
    [
        ("blessed", bool),
        ("better_than_champion", bool),
        ("champion_version", str),
    ],
):
    """KFP interface of evaluate (imports inside: KFP runs this function's source alone).

    Outputs what the DAG needs: `blessed` (the "blessed" condition) and, for register, the
    champion it was compared with; the metrics themselves are on the MLflow run (and in the
    `metrics`/`report` artifacts, for the KFP UI).
    """
    from collections import namedtuple

    from components.common import read_dataset_artifact
    from components.evaluate import run
    from zoo import tracking

    ds = read_dataset_artifact(dataset.path)
    with tracking.run_status(mlflow_run_id) as status:
        out = run(
            ds["manifest_uri"],
            trained_model.path,
            mlflow_run_id,
            report_path=report.path,
            mlflow_run=status.run,
        )
        # Not blessed: register is skipped, so this is the pipeline's last task.
        status.final = not out["blessing"]["blessed"]
    for k, v in out["metrics"].items():
        metrics.log_metric(k, float(v))
    b = out["blessing"]
    print("blessing:", "; ".join(b["reasons"]))
    outputs = namedtuple("EvaluateOutputs", ["blessed", "better_than_champion", "champion_version"])
    return outputs(b["blessed"], b["better_than_champion"], b["champion_version"])
