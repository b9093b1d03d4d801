"""Model logging and registration in MLflow: versions, tags and aliases (never stages).

`candidate` always points at the newest blessed version; `champion` moves only when the
evaluator found the candidate better than the champion *and* the champion has not changed
since (a compare-and-set on the alias, so two pipelines cannot both promote over one champion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata as md
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import zoo
from zoo.errors import GenpipeError
from zoo.tracking import ALIAS_CANDIDATE, ALIAS_CHAMPION, TAG_DATASET, TAG_GIT, TAG_PIPELINE_RUN

TAG_MODEL_URI = "genpipe.model_uri"
TAG_PRIMARY = "genpipe.primary_metric"


def _pins() -> list[str]:
    """pip requirements of the logged model: the versions running now (no slow inference)."""
    out = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "numpy", "pillow"):
        try:
            out.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return out


def log_model(c: MlflowClient, run_id: str, model_dir: Path) -> str:
    """Log a trained model directory as a pyfunc model in the run; returns its models:/ URI."""
    from zoo.serving import GenerativePyfunc

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=GenerativePyfunc(),
            artifacts={"model_dir": str(model_dir)},
            # Ship our package with the model so `mlflow models serve` needs nothing else.
            code_paths=[str(Path(zoo.__file__).parent)],
            pip_requirements=_pins(),
        )
    c.set_tag(run_id, TAG_MODEL_URI, info.model_uri)
    return info.model_uri


@dataclasses.dataclass
class RegisterResult:
    name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str


def champion(c: MlflowClient, name: str) -> Any | None:
    """The ModelVersion behind `name@champion`, or None when there is none (or no such model)."""
    try:
        return c.get_model_version_by_alias(name, ALIAS_CHAMPION)
    except MlflowException:
        return None


def download_model_dir(c: MlflowClient, name: str, ref: str, dest: Path) -> Path:
    """Download the trained-model directory (model.keras + config.json) of `name@alias` or `name/version`."""
    version = resolve_version(c, name, ref)
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix="genpipe-pull-"))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp))
        )
        found = [p.parent for p in local.rglob("model.keras")]
        if not found:
            raise GenpipeError(
                f"model {name} version {version.version} has no model.keras under {version.source}"
            )
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(found[0], dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_version(c: MlflowClient, name: str, ref: str) -> Any:
    """`ref` is an alias (champion, candidate) or a version number."""
    try:
        if ref.isdigit():
            return c.get_model_version(name, ref)
        return c.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        raise GenpipeError(
            f"registered model {name!r} has no {'version' if ref.isdigit() else 'alias'} {ref!r}: {e.message}"
        ) from None


def register(
    c: MlflowClient,
    name: str,
    run_id: str,
    *,
    better_than_champion: bool,
    expected_champion: str,
    tags: dict[str, str],
) -> RegisterResult:
    """Register (idempotently) the run's model, set `candidate`, and promote if warranted."""
    run = c.get_run(run_id)
    model_uri = run.data.tags.get(TAG_MODEL_URI)
    if not model_uri:
        raise GenpipeError(
            f"MLflow run {run_id} has no logged model (tag {TAG_MODEL_URI}); did training finish?"
        )
    try:
        c.get_registered_model(name)
    except MlflowException:
        # Suppressed: another pipeline may create it concurrently.
        with contextlib.suppress(MlflowException):
            c.create_registered_model(
                name, description=f"genpipe {run.data.tags.get('genpipe.model', '')} models"
            )
    # A retried register task must not create a second version for the same run.
    existing = [v for v in c.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    if existing:
        mv = existing[0]
    else:
        # MLflow 3: a version points at the LoggedModel (model_id) and its storage location.
        model_id = model_uri.removeprefix("models:/")
        logged = c.get_logged_model(model_id)
        mv = c.create_model_version(
            name, source=logged.artifact_location, run_id=run_id, tags=tags, model_id=model_id
        )
    for k, v in tags.items():
        c.set_model_version_tag(name, mv.version, k, v)
    c.set_registered_model_alias(name, ALIAS_CANDIDATE, mv.version)
    aliases = [ALIAS_CANDIDATE]
    current = champion(c, name)
    current_v = current.version if current else ""
    promoted = False
    if not better_than_champion:
        reason = "not better than the champion: stays candidate"
    elif current_v != (expected_champion or ""):
        reason = (
            f"champion moved from v{expected_champion or 'none'} to v{current_v} since evaluation: "
            "not promoted (re-run to compare against the new champion)"
        )
    else:
        c.set_registered_model_alias(name, ALIAS_CHAMPION, mv.version)
        aliases.append(ALIAS_CHAMPION)
        promoted = True
        reason = (
            f"better than champion v{expected_champion}" if expected_champion else "first champion"
        )
    return RegisterResult(
        name=name, version=str(mv.version), aliases=aliases, promoted=promoted, reason=reason
    )


def standard_tags(
    manifest_fingerprint: str, pipeline_run_id: str, git: str, primary: str, value: float
) -> dict[str, str]:
    return {
        TAG_DATASET: manifest_fingerprint,
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_GIT: git,
        TAG_PRIMARY: f"{primary}={value:.6g}",
    }
