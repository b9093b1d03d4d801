"""The promotion lock: alias moves of one registered model, one pipeline at a time.

A ticket lock on the MLflow registry (split out of zoo.registration, which re-exports it).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from zoo.errors import GenpipeError

T = TypeVar("T")

LOCK_SUFFIX = ".genpipe-lock"
# A ticket holds no model. The registry insists on a URI-looking source (a bare word is taken
# for a local path and refused without a run), and never reads it.
LOCK_SOURCE = "genpipe-lock:/ticket"
#: registry errors worth retrying when taking a ticket (MLflow gives up on version-number
#: conflicts after 3 tries with a plain INTERNAL_ERROR); anything else is raised at once
_TRANSIENT = ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")


@contextlib.contextmanager
def promotion_lock(
    c: MlflowClient,
    name: str,
    ttl_s: float = 120.0,
    timeout_s: float = 600.0,
    meanwhile: Callable[[], T] | None = None,
) -> Iterator[T | None]:
    """Serialize alias moves for one registered model across processes and machines.

    `meanwhile()` (work that needs no lock) runs in a thread while the ticket is taken and
    the turn awaited; the block gets its result (its error releases the ticket and is raised).

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
    with ThreadPoolExecutor(1, thread_name_prefix="genpipe-lock") as pool:
        side = pool.submit(meanwhile) if meanwhile is not None else None
        ticket = None
        try:
            try:
                ticket = _take_ticket(c, lock, owner, deadline)
            except MlflowException as e:
                # The lock model is made once per registered model: when a ticket finds none.
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                _ensure_lock_model(c, lock, name)
                ticket = _take_ticket(c, lock, owner, deadline)
            while (turn := _wait_for_turn(c, lock, ticket, ttl_s, deadline)) == "lost":
                # Our ticket was broken as stale (this process stalled for > ttl_s): queue again.
                ticket = _take_ticket(c, lock, owner, deadline)
            if turn == "timeout":
                raise GenpipeError(
                    f"could not lock registered model {name!r} for promotion within "
                    f"{timeout_s:g} s (tickets are the versions of {lock!r}; delete the lowest "
                    "one if no pipeline is registering)"
                )
            yield side.result() if side is not None else None
        finally:
            if side is not None:
                side.exception()  # wait for it: nothing of it may outlive the lock
            if ticket is not None:
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
