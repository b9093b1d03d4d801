"""zoo.unchanged: a run equals the champion only with the same data, config and code."""

import subprocess
import uuid

import pytest

from zoo import tracking, unchanged
from zoo.names import TAG_CODE, TAG_CONFIG, TAG_FINGERPRINT


@pytest.mark.parametrize("tag", [TAG_FINGERPRINT, TAG_CONFIG, TAG_CODE])
def test_a_champion_differing_in_one_tag_is_not_unchanged(stack, tag):
    """unchanged_champion compares all three; unknown code never matches."""
    from mlflow.entities.model_registry import ModelVersion

    c = tracking.client()
    name = f"vae-cmp-{uuid.uuid4().hex[:8]}"
    c.create_registered_model(name)
    exp = c.get_experiment_by_name("genpipe-test-cmp") or c.get_experiment(
        c.create_experiment("genpipe-test-cmp")
    )
    run_id = c.create_run(exp.experiment_id).info.run_id
    tags = {TAG_FINGERPRINT: "fp", TAG_CONFIG: "cfg", TAG_CODE: "abc"}
    mv: ModelVersion = c.create_model_version(name, "s3://x/y", run_id=run_id, tags=tags)
    c.set_registered_model_alias(name, "champion", mv.version)
    assert unchanged.unchanged_champion(c, name, "fp", "cfg", "abc") == mv.version
    c.set_model_version_tag(name, mv.version, tag, "other")
    assert unchanged.unchanged_champion(c, name, "fp", "cfg", "abc") is None
    assert unchanged.unchanged_champion(c, name, "fp", "cfg", "unknown") is None
    assert unchanged.unchanged_champion(c, f"{name}-none", "fp", "cfg", "abc") is None


def test_the_tag_keys_are_the_ones_existing_champions_carry():
    # Stored on registered versions: a new key would make every champion look changed.
    assert (TAG_FINGERPRINT, TAG_CONFIG, TAG_CODE) == (
        "genpipe.dataset_fingerprint",
        "genpipe.config_hash",
        "genpipe.code_version",
    )


def test_code_version_is_the_images_commit_or_the_checkouts_with_its_edits(monkeypatch):

    monkeypatch.setenv("GENPIPE_GIT_COMMIT", "0123abc")
    assert unchanged.code_version() == "0123abc"
    monkeypatch.delenv("GENPIPE_GIT_COMMIT")
    here = unchanged.code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    # This checkout's commit; `+digest` only while zoo/ or components/ have local edits.
    assert here.split("+")[0] == head.strip()
