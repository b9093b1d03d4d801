"""Model logging and registration in MLflow: versions, tags and aliases (never stages).

`candidate` always points at the newest blessed version; `champion` moves only when the
evaluator found the candidate better than the champion *and* the champion has not changed
since (a compare-and-set on the alias, so two pipelines cannot both promote over one champion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from zoo.errors import GenpipeError
from zoo.model_logging import log_model, model_requirements  # noqa: F401 - their home was here
from zoo.names import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    TAG_CODE,
    TAG_CONFIG,
    TAG_FINGERPRINT,
    TAG_GIT,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_PIPELINE_RUN,
    TAG_PRIMARY,
    parse_primary_tag,
    primary_tag,
)
from zoo.promotion_lock import LOCK_SOURCE, LOCK_SUFFIX, _registry, promotion_lock  # noqa: F401


@dataclasses.dataclass
class RegisterResult:
    name: str
    version: str
    aliases: list[str]
    promoted: bool
    reason: str


def prime() -> None:
    """Fill, before the warm server's zygote forks, what each task would fill on its first
    registry or log_model call: MLflow's model-registry store registry (its first use scans
    every installed distribution's entry points: ~0.05 s quiet, 0.15 s under load, on the
    critical path of register's first request and of ingest's champion read) and
    zoo.model_logging.prime. Reads and local files only: no request, no TensorFlow op."""
    from mlflow.tracking._model_registry import utils as registry_utils

    from zoo.model_logging import prime as prime_model_logging

    fill = getattr(registry_utils, "_get_store_registry", None)  # private: absent elsewhere
    if callable(fill):
        fill()
    prime_model_logging()


def alias_version(c: MlflowClient, name: str, alias: str) -> Any | None:
    """The ModelVersion behind `name@alias`, or None when there is none (or no such model)."""
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion(c: MlflowClient, name: str) -> Any | None:
    """The ModelVersion behind `name@champion`, or None."""
    return alias_version(c, name, ALIAS_CHAMPION)


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


def _metric_of(version: Any) -> tuple[str, str, float] | None:
    """(dataset fingerprint, metric name, value) recorded on a version, if any."""
    primary = parse_primary_tag(version.tags.get(TAG_PRIMARY, ""))
    return (version.tags.get(TAG_FINGERPRINT, ""), *primary) if primary else None


def register(
    c: MlflowClient,
    name: str,
    run_id: str,
    *,
    better_than_champion: bool,
    expected_champion: str,
    tags: dict[str, str],
    lower_is_better: bool = True,
    run: Any | None = None,
    record: Callable[[RegisterResult], Any] | None = None,
) -> RegisterResult:
    """Register (idempotently) the run's model, set `candidate`, and promote if warranted.

    Alias moves happen under `promotion_lock`. If the champion changed after this model was
    evaluated (another pipeline promoted meanwhile), the two are compared on the primary
    metric recorded on their versions — only when both were scored on the same dataset.
    `run`: the MLflow run `run_id` when the caller already read it (saves a round trip).
    `record(result)`: what the caller records once the aliases are set (the run's tags); it
    runs while the lock is released. Independent requests go out together (each is a round
    trip of 13-30 ms of server time): the version is found or created while the lock's
    ticket is taken, and both aliases move at once.
    """
    run = run if run is not None else c.get_run(run_id)
    model_uri = run.data.tags.get(TAG_MODEL_URI)
    if not model_uri:
        raise GenpipeError(
            f"MLflow run {run_id} has no logged model (tag {TAG_MODEL_URI}); did training finish?"
        )
    model_id = model_uri.removeprefix("models:/")

    def version() -> Any:
        return _version_of(c, name, run_id, tags, model_id, run)

    with (
        ThreadPoolExecutor(2, thread_name_prefix="genpipe-register") as pool,
        promotion_lock(c, name, meanwhile=version) as mv,
    ):
        # Both aliases in one read, under the lock (that read also refuses a prompt's name).
        current = c.get_registered_model(name).aliases
        cand = current.get(ALIAS_CANDIDATE)
        # `candidate` is the newest blessed version, whatever order registrations land in.
        aliases = [ALIAS_CANDIDATE] if cand is None or int(cand) <= int(mv.version) else []
        promoted, reason = _decide_promotion(
            c,
            name,
            current.get(ALIAS_CHAMPION),
            mv,
            better_than_champion,
            expected_champion,
            lower_is_better,
        )
        aliases += [ALIAS_CHAMPION] if promoted else []
        moves = [
            pool.submit(_registry(c).set_registered_model_alias, name, alias, mv.version)
            for alias in aliases
        ]
        for done in moves:
            done.result()
        result = RegisterResult(
            name=name, version=str(mv.version), aliases=aliases, promoted=promoted, reason=reason
        )
        recorded = pool.submit(record, result) if record is not None else None
    if recorded is not None:
        recorded.result()
    return result


def _version_of(
    c: MlflowClient, name: str, run_id: str, tags: dict[str, str], model_id: str, run: Any
) -> Any:
    """The run's version of `name` with `tags`: found (a retried register task must not create
    a second version for the same run; it gets the tags it lacks), else created."""
    # Both reads are independent: one round trip for the two.
    with ThreadPoolExecutor(2, thread_name_prefix="genpipe-register") as pool:
        found = pool.submit(c.search_model_versions, f"name='{name}' and run_id='{run_id}'")
        logged = pool.submit(c.get_logged_model, model_id)
        existing, location = found.result(), logged.result().artifact_location
        if not existing:
            # MLflow 3: a version points at the LoggedModel (model_id) and its storage
            # location; it is created with its tags, and the registry answers with them.
            return _create_version(c, name, location, run_id, tags, model_id, run)
        mv = existing[0]
        missing = {k: v for k, v in tags.items() if mv.tags.get(k) != v}
        for done in [
            pool.submit(c.set_model_version_tag, name, mv.version, k, v) for k, v in missing.items()
        ]:
            done.result()
    return c.get_model_version(name, mv.version) if missing else mv


def _create_version(
    c: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str],
    model_id: str,
    run: Any,
) -> Any:
    """A new version of `name`; the registered model is created when there is none yet."""
    create = dict(source=source, run_id=run_id, tags=tags, model_id=model_id)
    try:
        return c.create_model_version(name, **create)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    # Suppressed: another pipeline may create it concurrently.
    with contextlib.suppress(MlflowException):
        c.create_registered_model(
            name, description=f"genpipe {run.data.tags.get(TAG_MODEL, '')} models"
        )
    return c.create_model_version(name, **create)


def _decide_promotion(
    c: MlflowClient,
    name: str,
    current_v: str | None,
    mv: Any,
    better_than_champion: bool,
    expected: str,
    lower_is_better: bool,
) -> tuple[bool, str]:
    """Promote `mv` over the champion (version `current_v`, None for none)? The champion's
    version is read only when it moved since evaluation (its recorded metric decides)."""
    if not better_than_champion:
        return False, "not better than the champion: stays candidate"
    current_v = str(current_v) if current_v is not None else ""
    if current_v == (expected or ""):
        return True, (f"better than champion v{expected}" if expected else "first champion")
    if not current_v:  # the champion it beat was removed meanwhile
        return True, "champion alias was removed since evaluation: promoted"
    ours, theirs = _metric_of(mv), _metric_of(c.get_model_version(name, current_v))
    if not ours or not theirs or ours[:2] != theirs[:2]:
        return False, (
            f"champion moved from v{expected or 'none'} to v{current_v} since evaluation and was "
            "scored on other data: not promoted (re-run to compare against the new champion)"
        )
    better = ours[2] < theirs[2] if lower_is_better else ours[2] > theirs[2]
    verdict = "promoted" if better else "not promoted"
    return better, (
        f"champion moved to v{current_v} since evaluation; on the same data "
        f"{ours[1]}={ours[2]:.6g} vs {theirs[2]:.6g}: {verdict}"
    )


def standard_tags(
    fingerprint: str,
    pipeline_run_id: str,
    git: str,
    primary: str,
    value: float,
    config: str = "",
    code: str = "",
) -> dict[str, str]:
    """The tags of every model version: its data, code, config and score (what
    zoo.unchanged compares a new run with)."""
    tags = {
        TAG_FINGERPRINT: fingerprint,
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_GIT: git,
        TAG_PRIMARY: primary_tag(primary, value),
    }
    if config:
        tags[TAG_CONFIG] = config
    if code:
        tags[TAG_CODE] = code
    return tags
