"""Concurrent registration, for real: 10 processes register and promote one model name at
once against the MLflow server. Every version is recorded, there is exactly one champion and
it is the best blessed one; `candidate` is the newest version."""

import multiprocessing as mp
import os
import uuid

import pytest

# Nothing here imports TensorFlow at module level: the spawned workers import this module.
from model_helpers import tiny_vae_dir

from zoo import names, registration, tracking
from zoo.errors import GenpipeError

N = 10
FINGERPRINT = "c" * 64


def _register_one(args: tuple[str, str, float, dict]) -> dict:
    name, run_id, value, env = args
    os.environ.update(env)
    c = tracking.client()
    tags = registration.standard_tags(
        FINGERPRINT, f"pipe-{run_id[:6]}", "test", "test_neg_elbo", value
    )
    # Every pipeline was evaluated before any champion existed: all claim "better".
    res = registration.register(
        c, name, run_id, better_than_champion=True, expected_champion="", tags=tags
    )
    return {"version": res.version, "promoted": res.promoted, "value": value, "run_id": run_id}


@pytest.fixture
def logged_runs(stack, tmp_path):
    """N runs sharing one logged model (logging it N times would only test MLflow's speed)."""
    out = tiny_vae_dir(tmp_path, {"fingerprint": FINGERPRINT})
    c = tracking.client()
    first = tracking.get_or_create_run(c, "genpipe-test-concurrent", uuid.uuid4().hex, "vae")
    model_uri = registration.log_model(c, first, out)
    runs = [first]
    for _ in range(N - 1):
        run_id = tracking.get_or_create_run(c, "genpipe-test-concurrent", uuid.uuid4().hex, "vae")
        c.set_tag(run_id, names.TAG_MODEL_URI, model_uri)
        runs.append(run_id)
    return runs


def test_parallel_registrations_leave_one_champion_the_best(stack, logged_runs):
    name = f"vae-conc-{uuid.uuid4().hex[:8]}"
    values = [100.0 + ((i * 7) % N) for i in range(N)]  # distinct; the best is 100.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(N) as pool:
        results = pool.map(
            _register_one,
            [(name, r, v, dict(stack.env)) for r, v in zip(logged_runs, values, strict=True)],
        )
    c = tracking.client()
    versions = c.search_model_versions(f"name='{name}'")
    assert len(versions) == N and {r["version"] for r in results} == {v.version for v in versions}
    champ = c.get_model_version_by_alias(name, "champion")
    best = min(results, key=lambda r: r["value"])
    assert champ.run_id == best["run_id"], (champ.version, results)
    assert sum(r["promoted"] for r in results) >= 1
    assert c.get_model_version_by_alias(name, "candidate").version == str(N)
    # Every ticket was released: the lock model has no live version left.
    assert not c.search_model_versions(f"name='{name}{registration.LOCK_SUFFIX}'")


def test_lock_is_mutually_exclusive_and_breaks_only_a_stale_ticket(stack):
    """A holder that hangs past the TTL loses its ticket to the next waiter; its late release
    deletes its own ticket only, never the new holder's (no check-then-delete by name)."""
    import threading
    import time

    c = tracking.client()
    name = f"vae-lock-{uuid.uuid4().hex[:8]}"
    lock = f"{name}{registration.LOCK_SUFFIX}"
    live = lambda: sorted(int(v.version) for v in c.search_model_versions(f"name='{lock}'"))  # noqa: E731
    events: list[str] = []
    b_holds = threading.Event()
    release_b = threading.Event()

    def b() -> None:
        with registration.promotion_lock(c, name, ttl_s=1.0, timeout_s=60):
            events.append("b in")
            b_holds.set()
            release_b.wait(60)
            events.append("b out")

    with registration.promotion_lock(c, name, ttl_s=1.0, timeout_s=60):
        events.append("a in")
        assert live() == [1]
        t = threading.Thread(target=b)
        t.start()
        # A "hangs" past the TTL: B breaks A's ticket (version 1) and enters.
        assert b_holds.wait(30), "the waiter never broke the stale ticket"
        assert live() == [2]
    # A's late release deleted nothing of B's: B's ticket is still the live head.
    assert live() == [2] and events == ["a in", "b in"]

    # While B holds, C waits; C enters only after B leaves.
    def c_enters() -> None:
        with registration.promotion_lock(c, name, ttl_s=60.0, timeout_s=60):
            events.append("c in")

    tc = threading.Thread(target=c_enters)
    tc.start()
    time.sleep(1.5)
    assert "c in" not in events and live() == [2, 3]
    release_b.set()
    t.join(30)
    tc.join(30)
    assert events == ["a in", "b in", "b out", "c in"]
    assert live() == []


def test_lock_times_out_with_the_ticket_named(stack):
    c = tracking.client()
    name = f"vae-lockto-{uuid.uuid4().hex[:8]}"
    with (
        registration.promotion_lock(c, name, ttl_s=60.0, timeout_s=30),
        pytest.raises(GenpipeError, match=r"could not lock registered model .* within 1 s"),
        registration.promotion_lock(c, name, ttl_s=60.0, timeout_s=1.0),
    ):
        pass
    # The timed-out waiter withdrew its ticket, and the holder released its own.
    assert not c.search_model_versions(f"name='{name}{registration.LOCK_SUFFIX}'")
