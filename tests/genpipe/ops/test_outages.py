"""Outages injected for real: the session's SeaweedFS or MLflow is SIGKILLed (or SIGSTOPped)
mid-operation and restarted. Operations retry with backoff through the outage and complete
once the server is back; an outage longer than the retry budget (GENPIPE_RETRY_SECONDS) fails
with one error naming the endpoint, after one line saying what is waited on.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from genpipe.ops import stack as zstack
from genpipe.ops.stack import processes
from zoo.errors import GenpipeError
from zoo.settings import Settings
from zoo.storage import ObjectStore


def _kill_seaweedfs(state_dir) -> None:
    pid = processes.running_pid(state_dir, zstack.WEED)
    assert pid, "SeaweedFS is not running"
    os.killpg(pid, signal.SIGKILL)  # the hard way: no graceful drain
    deadline = time.time() + 10
    while processes.running_pid(state_dir, zstack.WEED) and time.time() < deadline:
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
    pid = processes.running_pid(stack.state_dir, zstack.MLFLOW)
    assert pid
    os.killpg(pid, signal.SIGKILL)
    while processes.running_pid(stack.state_dir, zstack.MLFLOW):
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


_MLFLOW_CALL = """
import sys, time
from zoo import tracking
t0 = time.monotonic()
try:
    tracking.client().get_run(sys.argv[1])
    print("no error")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
print(f"elapsed {time.monotonic() - t0:.1f}")
"""


def _call_mlflow_with_budget(run_id: str, budget_s: int) -> tuple[list[str], list[str], float]:
    """get_run in a fresh process with GENPIPE_RETRY_SECONDS=budget_s: (stdout, stderr lines,
    seconds the call took). A hung client fails the test by its timeout."""
    env = {**os.environ, "GENPIPE_RETRY_SECONDS": str(budget_s)}
    out = subprocess.run(
        [sys.executable, "-c", _MLFLOW_CALL, run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,  # today's MLflow defaults: ~15 min stalled, ~4 min dead
    )
    stdout = out.stdout.strip().splitlines()
    stderr = [line for line in out.stderr.splitlines() if line.strip()]
    return stdout[:-1], stderr, float(stdout[-1].split()[1])


def _mlflow_run_id() -> str:
    from zoo import tracking

    c = tracking.client()
    return tracking.get_or_create_run(c, "genpipe-test-outage", f"bound-{time.time_ns()}", "vae")


def _assert_bounded_failure(stack, out, err, elapsed, budget_s, cause):
    uri = stack.env["MLFLOW_TRACKING_URI"]
    # One line while waiting, naming what is waited on; one error line naming the endpoint.
    assert err == [f"waiting for MLflow at {uri}: {cause} (retrying for up to {budget_s} s)"], err
    assert out == [
        f"GenpipeError: MLflow at {uri} unreachable during get_run "
        f"(retried for {budget_s} s): {cause}"
    ], out
    assert budget_s - 2 <= elapsed <= budget_s + 8, elapsed


def test_stalled_mlflow_fails_within_the_budget_naming_it(stack):
    """SIGSTOPped server: connections are accepted, nothing answers."""
    run_id = _mlflow_run_id()
    pid = processes.running_pid(stack.state_dir, zstack.MLFLOW)
    assert pid
    os.killpg(pid, signal.SIGSTOP)
    try:
        out, err, elapsed = _call_mlflow_with_budget(run_id, 6)
    finally:
        os.killpg(pid, signal.SIGCONT)
    _assert_bounded_failure(stack, out, err, elapsed, 6, "no response within 1 s")
    print(f"stalled MLflow: failed after {elapsed:.1f} s with a 6 s budget")


def test_dead_mlflow_fails_within_the_budget_naming_it(stack):
    run_id = _mlflow_run_id()
    pid = processes.running_pid(stack.state_dir, zstack.MLFLOW)
    assert pid
    os.killpg(pid, signal.SIGKILL)
    while processes.running_pid(stack.state_dir, zstack.MLFLOW):
        time.sleep(0.2)
    try:
        out, err, elapsed = _call_mlflow_with_budget(run_id, 5)
    finally:
        zstack.up(stack.state_dir)
    _assert_bounded_failure(stack, out, err, elapsed, 5, "connection refused")
    print(f"dead MLflow: failed after {elapsed:.1f} s with a 5 s budget")


def test_mlflow_fluent_calls_survive_a_tracking_server_restart(stack):
    """MLflow's own retries are off under `tracking.client()`; the fluent and artifact calls
    we make (log_model, download_artifacts) go through `tracking.retrying` instead."""
    import mlflow

    from zoo import tracking

    tracking.client()  # sets the tracking URI and MLflow's per-request knobs
    pid = processes.running_pid(stack.state_dir, zstack.MLFLOW)
    assert pid
    os.killpg(pid, signal.SIGKILL)
    while processes.running_pid(stack.state_dir, zstack.MLFLOW):
        time.sleep(0.2)
    restarter = threading.Timer(3, zstack.up, args=(stack.state_dir,))
    restarter.start()
    try:
        t0 = time.time()
        found = tracking.retrying("search experiments", mlflow.search_experiments)
        waited = time.time() - t0
    finally:
        restarter.join()
    assert found and waited >= 2.5
