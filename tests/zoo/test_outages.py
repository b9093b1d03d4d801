"""Object-store outages injected for real: the session's SeaweedFS is SIGKILLed mid-operation
and restarted. Operations retry with backoff through the outage and complete once the server
is back; an outage longer than the retry budget fails with one error naming the endpoint.
"""

import os
import signal
import threading
import time

import pytest

from zoo import stack as zstack
from zoo.errors import GenpipeError
from zoo.settings import Settings
from zoo.storage import ObjectStore


def _kill_seaweedfs(state_dir) -> None:
    pid = zstack._running_pid(state_dir, zstack.WEED)
    assert pid, "SeaweedFS is not running"
    os.killpg(pid, signal.SIGKILL)  # the hard way: no graceful drain
    deadline = time.time() + 10
    while zstack._running_pid(state_dir, zstack.WEED) and time.time() < deadline:
        time.sleep(0.2)


def test_put_and_get_survive_a_seaweedfs_restart(stack):
    store = ObjectStore(Settings.from_env(), retry_seconds=90)
    uri = store.uri("outage/before.bin")
    store.put_bytes(uri, b"before")
    _kill_seaweedfs(stack.state_dir)
    outage = {"s": 0.0}

    def restart_later() -> None:
        t0 = time.time()
        time.sleep(5)  # the operation below starts while the server is down
        zstack.up(stack.state_dir)
        outage["s"] = time.time() - t0

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    t0 = time.time()
    try:
        store.put_bytes(store.uri("outage/during.bin"), b"x" * 100_000)
        waited = time.time() - t0
    finally:
        restarter.join()
    assert waited >= 4.0, "the PUT should have had to wait for the restart"
    assert outage["s"] >= 5.0
    assert store.get_bytes(store.uri("outage/during.bin")) == b"x" * 100_000
    assert store.get_bytes(uri) == b"before"  # data written before the kill survived
    print(f"S3 outage survived: {outage['s']:.1f} s (the PUT waited {waited:.1f} s)")


def test_outage_longer_than_budget_fails_naming_endpoint(stack):
    store = ObjectStore(Settings.from_env(), retry_seconds=3)
    _kill_seaweedfs(stack.state_dir)
    try:
        t0 = time.time()
        with pytest.raises(GenpipeError) as e:
            store.get_bytes(store.uri("outage/before.bin"))
        elapsed = time.time() - t0
        assert stack.env["GENPIPE_S3_ENDPOINT"] in str(e.value) and "retried for 3 s" in str(
            e.value
        )
        assert 2.5 <= elapsed < 30
    finally:
        zstack.up(stack.state_dir)
    assert store.exists(store.uri("outage/before.bin"))


def test_mlflow_logging_survives_a_tracking_server_restart(stack):
    """MLflow's client retries with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES/_BACKOFF_*);
    a metric logged while the server is down lands once it is back."""
    from zoo import tracking

    c = tracking.client()
    run_id = tracking.get_or_create_run(c, "genpipe-test-outage", f"outage-{time.time_ns()}", "vae")
    pid = zstack._running_pid(stack.state_dir, zstack.MLFLOW)
    assert pid
    os.killpg(pid, signal.SIGKILL)
    while zstack._running_pid(stack.state_dir, zstack.MLFLOW):
        time.sleep(0.2)
    outage = {"s": 0.0}

    def restart_later() -> None:
        t0 = time.time()
        time.sleep(3)
        zstack.up(stack.state_dir)
        outage["s"] = time.time() - t0

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    try:
        c.log_metric(run_id, "during_outage", 42.0)
    finally:
        restarter.join()
    assert outage["s"] >= 3.0
    assert c.get_run(run_id).data.metrics["during_outage"] == 42.0
    print(f"MLflow outage survived: {outage['s']:.1f} s")
