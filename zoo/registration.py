"""Model logging and registration in MLflow: versions, tags and aliases (never stages).

`candidate` always points at the newest blessed version; `champion` moves only when the
evaluator found the candidate better than the champion *and* the champion has not changed
since (a compare-and-set on the alias, so two pipelines cannot both promote over one champion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata as md
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from zoo.errors import GenpipeError
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

#: what loading and running a logged model imports (zoo/serving.py), as distributions
_SERVING_DISTS = ("keras", "numpy", "mlflow", "cloudpickle")


def model_requirements() -> list[str]:
    """pip requirements of a logged model: the versions running now (no slow inference).

    Only what the load path needs (zoo/serving.py: Keras on TensorFlow, NumPy, MLflow and
    cloudpickle for the pickled wrapper); our own package travels with the model as code.
    TensorFlow is declared as `tensorflow-cpu` of the same version, whichever build trained
    the model: models are served on CPU (images/Dockerfile.serving).
    """
    tf_version = ""
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            tf_version = md.version(dist)
            break
        except md.PackageNotFoundError:
            continue
    if not tf_version:
        raise GenpipeError("cannot log a model: neither tensorflow-cpu nor tensorflow is installed")
    return [f"tensorflow-cpu=={tf_version}"] + [f"{d}=={md.version(d)}" for d in _SERVING_DISTS]


def log_model(c: MlflowClient, run_id: str, model_dir: Path) -> str:
    """Log a trained model directory as a pyfunc model in the run; returns its models:/ URI.

    With a signature (the request fields) and an input example, so MLServer's MLflow runtime
    decodes a V2 request to the pyfunc's input (docs/kubernetes.md, step 6).
    """
    from mlflow.models import Model

    from zoo.serving import GenerativePyfunc, input_example, model_signature
    from zoo.shipping import stage_serving_code

    meta = json.loads((Path(model_dir) / "config.json").read_text())
    run = c.get_run(run_id)
    # The LoggedModel in the run's experiment with the run's params, as mlflow.pyfunc.log_model
    # makes it inside `mlflow.start_run(run_id)`; created here, the run needs no activating
    # (a start_run block reads and updates the run three times and ends it FINISHED, which
    # tracking.run_status then undid: 7 round trips).
    logged = mlflow.initialize_logged_model(
        name="model",
        source_run_id=run_id,
        experiment_id=run.info.experiment_id,
        params=dict(run.data.params),
    )
    with tempfile.TemporaryDirectory(prefix="genpipe-code-") as tmp:
        # Ship the load path of our package with the model, so a serving runtime needs only
        # the pins below: its import closure (zoo.shipping), not all of `zoo` (every file is
        # one artifact upload).
        code = stage_serving_code(meta["model"], Path(tmp))
        # What mlflow.pyfunc.log_model calls, with the run and the model named explicitly.
        info = Model.log(
            artifact_path=None,  # deprecated for `name`, but still a required argument
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=GenerativePyfunc(),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=model_requirements(),
            signature=model_signature(meta["model"], meta["data_spec"]),
            input_example=input_example(meta["model"]),
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


LOCK_SUFFIX = ".genpipe-lock"
# A ticket holds no model. The registry insists on a URI-looking source (a bare word is taken
# for a local path and refused without a run), and never reads it.
LOCK_SOURCE = "genpipe-lock:/ticket"
#: registry errors worth retrying when taking a ticket (MLflow gives up on version-number
#: conflicts after 3 tries with a plain INTERNAL_ERROR); anything else is raised at once
_TRANSIENT = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


@contextlib.contextmanager
def promotion_lock(
    c: MlflowClient, name: str, ttl_s: float = 120.0, timeout_s: float = 600.0
) -> Iterator[None]:
    """Serialize alias moves for one registered model across processes and machines.

    A ticket lock on the registry: MLflow numbers the versions of one registered model
    atomically and never reuses a number (deleted versions keep theirs). Each contender adds a
    version (its ticket) to the registered model `<name>.genpipe-lock` and holds the lock while
    its ticket is the lowest live one. Releasing, and breaking a stale ticket, delete one exact
    version, so no one can delete a later holder's ticket (deleting a lock *by name* could: it
    may be released and taken again between the check and the delete). A ticket that stays at
    the head longer than `ttl_s` (its holder died) is deleted by the waiters behind it.
    """
    lock = f"{name}{LOCK_SUFFIX}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    _ensure_lock_model(c, lock, name)
    ticket = _take_ticket(c, lock, owner, deadline)
    try:
        while (turn := _wait_for_turn(c, lock, ticket, ttl_s, deadline)) == "lost":
            # Our own ticket was broken as stale (this process stalled for > ttl_s): queue again.
            ticket = _take_ticket(c, lock, owner, deadline)
        if turn == "timeout":
            raise GenpipeError(
                f"could not lock registered model {name!r} for promotion within {timeout_s:g} s "
                f"(tickets are the versions of {lock!r}; delete the lowest one if no pipeline "
                "is registering)"
            )
        yield
    finally:
        with contextlib.suppress(MlflowException):
            c.delete_model_version(lock, str(ticket))


def _ensure_lock_model(c: MlflowClient, lock: str, name: str) -> None:
    try:
        c.create_registered_model(
            lock, description=f"genpipe promotion lock of {name!r}: each version is a ticket"
        )
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _pause(delay: float, cap: float) -> float:
    """Sleep `delay` plus jitter (contenders must not retry in lockstep); the next delay."""
    time.sleep(delay + random.uniform(0, delay))
    return min(delay * 2, cap)


def _take_ticket(c: MlflowClient, lock: str, owner: str, deadline: float) -> int:
    """A new version of the lock model: its number is our place in the queue."""
    delay = 0.05
    while True:
        try:
            v = c.create_model_version(lock, LOCK_SOURCE, description=owner)
            return int(v.version)
        except MlflowException as e:
            # The registry retries version-number conflicts itself, a few times; under heavy
            # contention it can still give up. Retry that until the lock's deadline.
            if e.error_code not in _TRANSIENT or time.monotonic() > deadline:
                raise
        delay = _pause(delay, cap=1.0)


def _wait_for_turn(c: MlflowClient, lock: str, ticket: int, ttl_s: float, deadline: float) -> str:
    """Wait until `ticket` is the lowest live version ("acquired"), was deleted ("lost"), or
    the deadline passed ("timeout")."""
    head_since: dict[int, float] = {}  # when *this* waiter first saw each ticket at the head
    delay = 0.05
    announced = False
    while True:
        versions = {int(v.version): v for v in c.search_model_versions(f"name='{lock}'")}
        live = sorted(versions)
        if ticket not in live:
            return "lost"
        head = live[0]
        if head == ticket:
            return "acquired"
        if not announced:  # one line, so a wait (e.g. behind a dead holder) is never silent
            age = time.time() - (versions[head].creation_timestamp or 0) / 1000
            print(
                f"waiting for the promotion lock {lock!r}: held by "
                f"{versions[head].description or 'unknown'} for {age:.0f} s "
                f"(taken over after {ttl_s:g} s)",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        now = time.monotonic()
        if now - head_since.setdefault(head, now) > ttl_s:
            with contextlib.suppress(MlflowException):  # another waiter may have broken it
                c.delete_model_version(lock, str(head))
        if now > deadline:
            return "timeout"
        delay = _pause(delay, cap=2.0)


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
) -> RegisterResult:
    """Register (idempotently) the run's model, set `candidate`, and promote if warranted.

    Alias moves happen under `promotion_lock`. If the champion changed after this model was
    evaluated (another pipeline promoted meanwhile), the two are compared on the primary
    metric recorded on their versions — only when both were scored on the same dataset.
    `run`: the MLflow run `run_id` when the caller already read it (saves a round trip).
    """
    run = run if run is not None else c.get_run(run_id)
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
                name, description=f"genpipe {run.data.tags.get(TAG_MODEL, '')} models"
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
    # A new version got its tags at creation; a retried one gets what it lacks (one request each).
    for k, v in tags.items():
        if existing and mv.tags.get(k) != v:
            c.set_model_version_tag(name, mv.version, k, v)
    mv = c.get_model_version(name, mv.version)
    with promotion_lock(c, name):
        aliases = []
        cand = alias_version(c, name, ALIAS_CANDIDATE)
        # `candidate` is the newest blessed version, whatever order registrations land in.
        if cand is None or int(cand.version) <= int(mv.version):
            c.set_registered_model_alias(name, ALIAS_CANDIDATE, mv.version)
            aliases.append(ALIAS_CANDIDATE)
        promoted, reason = _decide_promotion(
            champion(c, name), mv, better_than_champion, expected_champion, lower_is_better
        )
        if promoted:
            c.set_registered_model_alias(name, ALIAS_CHAMPION, mv.version)
            aliases.append(ALIAS_CHAMPION)
    return RegisterResult(
        name=name, version=str(mv.version), aliases=aliases, promoted=promoted, reason=reason
    )


def _decide_promotion(
    current: Any, mv: Any, better_than_champion: bool, expected: str, lower_is_better: bool
) -> tuple[bool, str]:
    if not better_than_champion:
        return False, "not better than the champion: stays candidate"
    current_v = current.version if current else ""
    if current_v == (expected or ""):
        return True, (f"better than champion v{expected}" if expected else "first champion")
    if current is None:  # the champion it beat was removed meanwhile
        return True, "champion alias was removed since evaluation: promoted"
    ours, theirs = _metric_of(mv), _metric_of(current)
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
