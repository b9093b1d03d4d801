"""The fastest retrain is the one skipped (issue 14): a `genpipe run` whose data, resolved config
and code equal the champion's trains nothing, says so and exits 0; changed config, changed data
or `--force` train. A real CLI process each time, against the real embedded stack."""

import os
import subprocess
import sys
import time
import uuid

from zoo import tracking
from zoo.names import TAG_CODE, TAG_CONFIG

LOOSE = '{"test_neg_elbo": {"max": 1000}}'
TINY = ["--preset", "tiny", "--set", "epochs=1", "--set", "steps_per_epoch=5"]


#: the code version, as an image states it: other work in this checkout must not change it
CODE = f"test-{uuid.uuid4().hex[:12]}"


def genpipe(*args: str, home) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "GENPIPE_HOME": str(home), "GENPIPE_GIT_COMMIT": CODE}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "genpipe", "run", "vae", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    return out, time.perf_counter() - t0


def _runs(experiment: str) -> list:
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_unchanged_run_is_skipped_changed_or_forced_runs_train(stack):
    name = f"vae-skip-{uuid.uuid4().hex[:8]}"
    experiment = f"genpipe-test-{name}"
    common = [*TINY, "--name", name, "--experiment", experiment, "--thresholds", LOOSE]
    c = tracking.client()

    first, t_trained = genpipe(*common, home=stack.state_dir)
    assert first.returncode == 0, first
    versions = c.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == ["1"]
    assert versions[0].tags[TAG_CONFIG]  # recorded for the comparison below
    assert versions[0].tags[TAG_CODE] == CODE

    again, t_skipped = genpipe(*common, home=stack.state_dir)
    assert again.returncode == 0, again
    assert f"unchanged since champion v1 of {name}" in again.stdout, again.stdout
    assert "\x1b[" not in again.stdout + again.stderr
    assert len(c.search_model_versions(f"name='{name}'")) == 1  # no new version
    skipped = _runs(experiment)[-1]
    assert skipped.data.tags["genpipe.unchanged_since"] == "1"
    assert skipped.info.status == "FINISHED"
    # No training: train, evaluate and register never ran (no model, no metrics).
    assert "genpipe.model_uri" not in skipped.data.tags and not skipped.data.metrics
    print(f"trained run {t_trained:.1f} s, skipped run {t_skipped:.1f} s (CLI wall)")
    assert t_skipped < t_trained

    # A changed config trains (same data, same code).
    changed, _ = genpipe(*common, "--set", "learning_rate=0.002", home=stack.state_dir)
    assert changed.returncode in (0, 3), changed
    assert "unchanged since" not in changed.stdout
    assert "genpipe.model_uri" in _runs(experiment)[-1].data.tags

    # Changed data (another held-out split, so another fingerprint) trains.
    data, _ = genpipe(*common, "--test-fraction", "0.2", home=stack.state_dir)
    assert data.returncode in (0, 3), data
    assert "unchanged since" not in data.stdout
    assert "genpipe.model_uri" in _runs(experiment)[-1].data.tags

    # --force trains although nothing changed since the champion.
    forced, _ = genpipe(*common, "--force", home=stack.state_dir)
    assert forced.returncode in (0, 3), forced
    assert "unchanged since" not in forced.stdout
    run = _runs(experiment)[-1]
    assert "genpipe.model_uri" in run.data.tags and "genpipe.unchanged_since" not in run.data.tags
