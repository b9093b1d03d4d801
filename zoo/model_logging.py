"""Logging a trained model to MLflow as a pyfunc model, in few round trips.

`log_model` stores what `mlflow.pyfunc.log_model` (MLflow 3.17.2's `Model.log`,
mlflow/models/model.py) stores, step by step through MLflow's own functions, and differs only
in how it gets there (a warm run's training task spent ~0.9 s here, most of it waiting):

* the model's files upload concurrently (Model.log puts them one after another: 17 PUTs
  through the tracking server's artifact proxy for a VAE);
* the run's step-0 metrics are copied to the LoggedModel from the run as read (Model.log
  reads the whole history of every metric of the run, one request per metric, to find them);
* MLflow's check of the input example (load the saved model and predict the serving input
  example as a server would; a failure is a warning, as in Model.log) runs while the files
  upload; should it find environment variables to record (MLflow's allowlist: API keys,
  Databricks auth), MLmodel is rewritten and uploaded again, with their list, after the rest.
"""

from __future__ import annotations

import functools
import gc
import importlib.metadata as md
import json
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from zoo import timeline
from zoo.errors import GenpipeError
from zoo.mlflow_calls import artifact_repo
from zoo.names import TAG_MODEL_URI

_logger = logging.getLogger(__name__)

#: what loading and running a logged model imports (zoo/serving.py), as distributions
_SERVING_DISTS = ("keras", "numpy", "mlflow", "cloudpickle")
#: concurrent artifact uploads: a VAE has 17 files, a few KB each but model.keras
UPLOAD_THREADS = 8
#: the file MLflow reads a model's metadata from (mlflow.models.model.MLMODEL_FILE_NAME)
MLMODEL = "MLmodel"


def model_requirements() -> list[str]:
    """pip requirements of a logged model: the versions running now (no slow inference).

    Only what the load path needs (zoo/serving.py: Keras on TensorFlow, NumPy, MLflow and
    cloudpickle for the pickled wrapper); our own package travels with the model as code.
    TensorFlow is declared as `tensorflow-cpu` of the same version, whichever build trained
    the model: models are served on CPU (images/Dockerfile.serving). Looked up once per
    process (installed versions do not change under a running process: the warm server is
    replaced when they do).
    """
    return list(_requirements())


#: stand-ins for `prime`'s dry saves, one per family (what config.json's meta holds)
_PRIME_METAS = (
    {"model": "vae", "data_spec": {"shape": [28, 28, 1], "num_classes": 10}},
    {"model": "char_rnn", "data_spec": {"shape": None, "num_classes": None, "vocab": ["a"]}},
)


def prime() -> None:
    """What every log_model does before its model exists, done now: the warm server's zygote
    calls this before it forks, so a training task finds it done. The serving code's import
    closure (zoo.shipping.prime), the installed versions, and a dry `_save` per family of a
    stand-in model directory (no model: nothing is loaded, no TensorFlow op runs, nothing
    leaves this machine), which does MLflow's once-per-process work: its lazy imports, pandas'
    first DataFrame, and the warning about `predict`'s type hints, whose formatting reads
    mlflow/pyfunc/__init__.py (~0.14 s of each task's save under load)."""
    from zoo.shipping import prime as prime_shipping

    prime_shipping()
    _requirements()
    before = set(threading.enumerate())
    with tempfile.TemporaryDirectory(prefix="genpipe-prime-") as tmp:
        for meta in _PRIME_METAS:
            stand_in = Path(tmp) / meta["model"] / "in"
            stand_in.mkdir(parents=True)
            (stand_in / "config.json").write_text(json.dumps(meta))
            _save(stand_in.parent, meta, stand_in)
    # A save copies the model directory through an MLflow artifact repository whose thread
    # pool is in a reference cycle (its handler's closure): collected now, its idle workers
    # exit, so the zygote forks with no thread but its own.
    gc.collect()
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)


@functools.cache
def _requirements() -> tuple[str, ...]:
    tf_version = ""
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            tf_version = md.version(dist)
            break
        except md.PackageNotFoundError:
            continue
    if not tf_version:
        raise GenpipeError("cannot log a model: neither tensorflow-cpu nor tensorflow is installed")
    return (f"tensorflow-cpu=={tf_version}", *(f"{d}=={md.version(d)}" for d in _SERVING_DISTS))


def log_model(c: MlflowClient, run_id: str, model_dir: Path) -> str:
    """Log a trained model directory as a pyfunc model in the run; returns its models:/ URI.

    With a signature (the request fields) and an input example, so MLServer's MLflow runtime
    decodes a V2 request to the pyfunc's input (docs/kubernetes.md, step 6). The LoggedModel
    is in the run's experiment with the run's params, among the run's outputs, carries the
    run's step-0 metrics and ends READY (FAILED when logging fails), as Model.log leaves it;
    the run gets the tag genpipe.model_uri.
    """
    from mlflow.entities import LoggedModelStatus

    meta = json.loads((Path(model_dir) / "config.json").read_text())
    created = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="genpipe-model-") as tmp,
            ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="genpipe-log-model") as pool,
        ):
            # The run is read and the LoggedModel created while the model saves and is checked.
            created = pool.submit(_create, c, run_id, pool)
            try:
                checked_dir, local = _save(Path(tmp), meta, model_dir)
                timeline.mark("log_model: saved")
                checked = pool.submit(_check_example, checked_dir)
                logged, linked = created.result()
                timeline.mark("log_model: logged model created")
                _stamp(checked_dir, local, run_id, logged)
                _upload(pool, local, logged.artifact_location, during=checked.result)
                for done in linked:
                    done.result()
                timeline.mark("log_model: uploaded")
            finally:
                wait([created])  # it submits the model's links while the pool takes them
    except BaseException:
        # What Model.log's `_use_logged_model` does: a model that failed to log says so.
        logged = _created_or_none(created)
        if logged is not None:
            try:
                c.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            except Exception as e:  # noqa: BLE001 - the logging error matters more
                _logger.warning("could not mark logged model %s FAILED: %s", logged.model_id, e)
        raise
    uri = f"models:/{logged.model_id}"
    # Independent: the model's status and the run's tag, in one round trip.
    with ThreadPoolExecutor(2, thread_name_prefix="genpipe-log-model") as pool:
        ready = pool.submit(c.finalize_logged_model, logged.model_id, LoggedModelStatus.READY)
        tagged = pool.submit(c.set_tag, run_id, TAG_MODEL_URI, uri)
        ready.result()
        tagged.result()
    timeline.mark("log_model: finalized")
    return uri


def _create(c: MlflowClient, run_id: str, pool: ThreadPoolExecutor) -> tuple[Any, list[Any]]:
    """Create the run's LoggedModel as Model.log does; returns it with the futures of its two
    links to the run (sent at once): the run's output, and the run's step-0 metrics."""
    from mlflow.entities import LoggedModelOutput

    run = c.get_run(run_id)
    # Created here, the run needs no activating (a `mlflow.start_run` block reads and updates
    # the run three times and ends it FINISHED, which tracking.run_status then undid).
    logged = mlflow.initialize_logged_model(
        name="model",
        source_run_id=run_id,
        experiment_id=run.info.experiment_id,
        params=dict(run.data.params),
    )
    output = [LoggedModelOutput(logged.model_id, step=0)]
    linked = [
        pool.submit(c.log_outputs, run_id, output),
        pool.submit(_copy_step0_metrics, c, run, logged.model_id),
    ]
    return logged, linked


def _created_or_none(created: Any) -> Any:
    """The LoggedModel `_create` made, or None when it made none (or never ran)."""
    if created is None or created.cancelled() or created.exception() is not None:
        return None
    return created.result()[0]


def _save(tmp: Path, meta: dict[str, Any], model_dir: Path) -> tuple[Path, Path]:
    """Save the pyfunc model locally as Model.log does, before the LoggedModel exists: its
    MLmodel names no run and no LoggedModel yet (`_stamp` writes the one uploaded). Returns
    (the saved directory, which the check loads; a copy of its files but MLmodel, to upload):
    the check may leave __pycache__ dirs in the first, never in the upload."""
    from mlflow.models import Model

    from zoo.serving import GenerativePyfunc, input_example, model_signature
    from zoo.shipping import stage_serving_code

    # Ship the load path of our package with the model, so a serving runtime needs only the
    # pins below: its import closure (zoo.shipping), not all of `zoo` (a file is an upload).
    code = stage_serving_code(meta["model"], tmp / "code")
    saved = tmp / "checked"
    mlflow.pyfunc.save_model(
        path=str(saved),
        mlflow_model=Model(),
        python_model=GenerativePyfunc(),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(code)],
        pip_requirements=model_requirements(),
        signature=model_signature(meta["model"], meta["data_spec"]),
        input_example=input_example(meta["model"]),
    )
    # As Model.log: loading the model (requirement checks) may leave __pycache__ dirs behind.
    for pycache in list(saved.rglob("__pycache__")):
        shutil.rmtree(pycache, ignore_errors=True)
    local = tmp / "model"
    # Hard links: the files are never written again (MLmodel is, so it is not linked).
    shutil.copytree(saved, local, copy_function=_link_or_copy, ignore=_top_mlmodel(saved))
    return saved, local


def _top_mlmodel(saved: Path) -> Any:
    return lambda d, names: [MLMODEL] if Path(d) == saved else []


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _stamp(saved: Path, local: Path, run_id: str, logged: Any) -> None:
    """Write `local`'s MLmodel: the saved one naming the run and the LoggedModel as Model.log's
    does (artifact_path, model_uuid, run_id, model_id; the rest is save_model's own)."""
    from mlflow.models import Model

    mlflow_model = Model.load(str(saved / MLMODEL))
    mlflow_model.artifact_path = logged.artifact_location
    mlflow_model.model_uuid = logged.model_id
    mlflow_model.run_id = run_id
    mlflow_model.model_id = logged.model_id
    mlflow_model.save(str(local / MLMODEL))


def _copy_step0_metrics(c: MlflowClient, run: Any, model_id: str) -> None:
    """The run's metrics at step 0 become the LoggedModel's too (Model.log's
    `log_model_metrics_for_step`): from the run as read, in one request. The train task's are
    its totals (train_wall_s, ...); per-epoch values are logged at steps >= 1."""
    from mlflow.entities import Metric

    metrics = [
        Metric(
            key=m.key,
            value=m.value,
            timestamp=m.timestamp,
            step=m.step,
            dataset_name=m.dataset_name,
            dataset_digest=m.dataset_digest,
            run_id=run.info.run_id,
            model_id=model_id,
        )
        for m in run.data._metric_objs  # the Metric entities behind run.data.metrics
        if m.step == 0
    ]
    if metrics:
        c.log_batch(run.info.run_id, metrics=metrics)


def _check_example(local: Path) -> list[str]:
    """Model.log's check that the model serves its input example: load the saved model and
    predict the serving input example as a scoring server would. A failure is a warning, as
    there. Returns the environment variables (MLflow's allowlist: API keys, Databricks auth)
    that prediction read, which MLflow records in MLmodel."""
    from mlflow.models import Model
    from mlflow.models.utils import _validate_serving_input
    from mlflow.utils.model_utils import RECORD_ENV_VAR_ALLOWLIST, env_var_tracker

    mlflow_model = Model.load(str(local / MLMODEL))
    serving_input = mlflow_model.get_serving_input(str(local))
    if not serving_input:
        return []
    with env_var_tracker() as tracked:
        try:
            _validate_serving_input(model_uri=str(local), serving_input=serving_input)
        except Exception as e:  # noqa: BLE001 - as in Model.log: a warning, not an error
            _logger.warning(
                "Failed to validate serving input example %s: %s", serving_input[:50], e
            )
        return sorted(n for n in tracked if any(a in n for a in RECORD_ENV_VAR_ALLOWLIST))


def _upload(pool: ThreadPoolExecutor, local: Path, artifact_uri: str, during: Any) -> None:
    """Upload the saved model's files to `artifact_uri` concurrently; `during()` runs
    meanwhile and returns env var names to record in MLmodel (then uploaded again)."""
    from mlflow.utils.file_utils import relative_path_to_artifact_path

    repo = artifact_repo(artifact_uri)

    def put(path: Path) -> None:
        rel = path.parent.relative_to(local)
        repo.log_artifact(
            str(path), relative_path_to_artifact_path(str(rel)) if rel.parts else None
        )

    # Largest first: model.keras would otherwise start last and finish alone.
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    started = [pool.submit(put, p) for p in files]
    env_vars = during()
    timeline.mark("log_model: example checked")
    for done in started:
        done.result()
    if env_vars:  # after the first MLmodel landed: the rewritten one must be the last write
        listed = _record_env_vars(local, env_vars)
        for done in [pool.submit(put, local / MLMODEL), pool.submit(put, listed)]:
            done.result()


def _record_env_vars(local: Path, env_vars: list[str]) -> Path:
    """What Model.log does with the env vars prediction read: a file listing them (returned)
    and the list in MLmodel."""
    from mlflow.models import Model
    from mlflow.models.model import ENV_VAR_FILE_HEADER, ENV_VAR_FILE_NAME

    listed = local / ENV_VAR_FILE_NAME
    listed.write_text(ENV_VAR_FILE_HEADER + "\n".join(env_vars) + "\n")
    mlflow_model = Model.load(str(local / MLMODEL))
    mlflow_model.env_vars = env_vars
    mlflow_model.save(os.path.join(local, MLMODEL))
    return listed
