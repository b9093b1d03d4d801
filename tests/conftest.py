"""Shared fixtures: one real embedded stack (SeaweedFS S3 + MLflow) per test session.

`stack` starts it in a temporary state dir on free ports and exports its client settings to
os.environ; `store` is an ObjectStore on it. Tests that use either are marked `stack`
automatically, so `pytest -m "not stack"` runs without servers.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from genpipe.ops import stack as zstack
from pipelines import warm
from zoo.errors import StackError
from zoo.storage import ObjectStore

STACK_FIXTURES = {"stack", "store"}


@dataclass(frozen=True)
class RunningStack:
    """The session's stack: its client environment and state directory."""

    env: dict[str, str]
    state_dir: Path

    def __repr__(self) -> str:  # pytest prints fixture values on failure: hide the secret
        return f"RunningStack(state_dir={self.state_dir!r}, endpoints={self.urls})"

    @property
    def urls(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.endswith(("_ENDPOINT", "_URI"))}


def start_stack(state_dir: Path, attempts: int = 3) -> zstack.StackInfo:
    """Start a stack on free ports; retries when another process grabs a port meanwhile."""
    for attempt in range(attempts):
        try:
            return zstack.up(state_dir, ports=zstack.free_ports())
        except StackError as e:
            zstack.down(state_dir, timeout=3)
            # Another process may take a port between our check and the server's bind.
            raced = isinstance(e, zstack.PortInUseError) or "address already in use" in str(e)
            if not raced or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# Warm task servers the tests start (pipelines.warm) stop soon after their last use.
os.environ.setdefault("GENPIPE_WARM_IDLE_SECONDS", "60")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A real SeaweedFS + MLflow stack for the whole session, its env set in os.environ."""
    state_dir = tmp_path_factory.mktemp("genpipe-home")
    try:
        start_stack(state_dir)
    except StackError as e:  # the message carries the server's last log lines
        zstack.down(state_dir, timeout=3)
        pytest.fail(f"embedded stack failed to start in {state_dir}:\n{e}", pytrace=False)
    env = zstack.env(state_dir)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield RunningStack(env=env, state_dir=state_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # The data is thrown away: no need to wait for SeaweedFS's 15 s graceful drain.
        zstack.down(state_dir, timeout=3)
        warm.stop_server(state_dir)  # pipeline tests' warm task server (pipelines.warm)


@pytest.fixture
def mlflow_requests(stack: RunningStack) -> Callable[..., AbstractContextManager[Counter]]:
    """`with mlflow_requests() as seen:` counts the HTTP requests this process sends to the
    stack's MLflow (every client call goes through requests.Session.request), keyed
    "METHOD /api/2.0/mlflow/runs/log-batch" (`short=True`: "METHOD log-batch"); the requests
    themselves go out unchanged."""
    import requests

    from zoo.settings import Settings

    uri = Settings.from_env().mlflow_uri.rstrip("/")  # the stack exported its settings

    @contextmanager
    def counting(short: bool = False) -> Iterator[Counter]:
        seen: Counter = Counter()
        real = requests.Session.request

        def request(self, method, url, *args, **kwargs):
            if str(url).startswith(uri):
                path = str(url)[len(uri) :].split("?")[0]
                seen[f"{method} {path.rsplit('/', 1)[-1] if short else path}"] += 1
            return real(self, method, url, *args, **kwargs)

        requests.Session.request = request
        try:
            yield seen
        finally:
            requests.Session.request = real

    return counting


@pytest.fixture
def store(stack: RunningStack) -> ObjectStore:
    """An ObjectStore on the session stack's `genpipe` bucket."""
    return ObjectStore.from_env()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
