"""A promotion that waits on the registry lock says so at once, naming the lock, its holder
and the holder's age (an orphaned lock used to make `register` wait ~2 min in silence)."""

import re
import time
import uuid

from zoo import registration, tracking


def test_waiting_on_an_orphaned_lock_prints_one_line(stack, capfd):
    c = tracking.client()
    name = f"vae-lock-{uuid.uuid4().hex[:8]}"
    lock = f"{name}{registration.LOCK_SUFFIX}"
    # A ticket whose holder died (the process that took it is gone).
    c.create_registered_model(lock)
    c.create_model_version(lock, registration.LOCK_SOURCE, description="deadhost:4242:cafe")
    time.sleep(1.5)
    t0 = time.monotonic()
    with registration.promotion_lock(c, name, ttl_s=2.0, timeout_s=60):
        waited = time.monotonic() - t0
    err = [line for line in capfd.readouterr().err.splitlines() if "promotion lock" in line]
    assert len(err) == 1, err
    assert re.fullmatch(
        rf"waiting for the promotion lock '{re.escape(lock)}': held by deadhost:4242:cafe "
        r"for [1-9]\d* s \(taken over after 2 s\)",
        err[0],
    ), err[0]
    assert 2.0 <= waited < 30  # and then it took the orphaned lock over
