"""Model logging and registration in MLflow: versions, tags and aliases (never stages).

`candidate` always points at the newest blessed version; `champion` moves only when the
evaluator found the candidate better than the champion *and* the champion has not changed
since (a compare-and-set on the alias, so two pipelines cannot both promote over one champion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
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
    try:
        ticket = _take_ticket(c, lock, owner, deadline)
    except MlflowException as e:
        # The lock model is made once per registered model: created when a ticket finds none.
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
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
            _registry(c).delete_model_version(lock, str(ticket))


def _registry(c: MlflowClient) -> Any:
    """Writes to a registered model this code has read: tracking.BoundedClient.registry
    (skips MlflowClient's re-read of the model per write), else the client itself."""
    return c.registry() if hasattr(c, "registry") else c


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
                _registry(c).delete_model_version(lock, str(head))
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
    model_id = model_uri.removeprefix("models:/")
    # A retried register task must not create a second version for the same run. Both reads
    # are independent: one round trip for the two.
    with ThreadPoolExecutor(2, thread_name_prefix="genpipe-register") as pool:
        found = pool.submit(c.search_model_versions, f"name='{name}' and run_id='{run_id}'")
        logged = pool.submit(c.get_logged_model, model_id)
        existing, location = found.result(), logged.result().artifact_location
    if existing:
        mv = existing[0]
        # A retried version gets the tags it lacks (one request each).
        missing = {k: v for k, v in tags.items() if mv.tags.get(k) != v}
        for k, v in missing.items():
            c.set_model_version_tag(name, mv.version, k, v)
        if missing:
            mv = c.get_model_version(name, mv.version)
    else:
        # MLflow 3: a version points at the LoggedModel (model_id) and its storage location;
        # it is created with its tags, and the registry answers with them.
        mv = _create_version(c, name, location, run_id, tags, model_id, run)
    with promotion_lock(c, name):
        # Both aliases in one read, under the lock (that read also refuses a prompt's name).
        current = c.get_registered_model(name).aliases
        aliases = []
        cand = current.get(ALIAS_CANDIDATE)
        # `candidate` is the newest blessed version, whatever order registrations land in.
        if cand is None or int(cand) <= int(mv.version):
            _registry(c).set_registered_model_alias(name, ALIAS_CANDIDATE, mv.version)
            aliases.append(ALIAS_CANDIDATE)
        promoted, reason = _decide_promotion(
            c,
            name,
            current.get(ALIAS_CHAMPION),
            mv,
            better_than_champion,
            expected_champion,
            lower_is_better,
        )
        if promoted:
            _registry(c).set_registered_model_alias(name, ALIAS_CHAMPION, mv.version)
            aliases.append(ALIAS_CHAMPION)
    return RegisterResult(
        name=name, version=str(mv.version), aliases=aliases, promoted=promoted, reason=reason
    )


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
