"""Cluster CLI commands that need no cluster: `genpipe images` refusals and what compiled
pipelines hold. The KFP commands (submit, schedule, schedules) are tested against the
swagger-validating KFP server in tests/genpipe/ops/test_kfp_client.py.
"""

from pathlib import Path

import pytest
from cli_helpers import run_cli

from genpipe.ops.kfp_auth import ENV_COOKIE, ENV_HOST, ENV_SA_TOKEN_PATH, ENV_TOKEN

FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-fake-should-not-leak",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-should-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-should-not-leak",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in (ENV_HOST, ENV_TOKEN, ENV_COOKIE, "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(ENV_SA_TOKEN_PATH, str(tmp_path / "no-such-token"))
    for k, v in FAKE_SECRETS.items():
        monkeypatch.setenv(k, v)


def test_images_commands_refuse_latest_and_report_missing_engine(capsys, monkeypatch):
    code, _, err = run_cli(["images", "build", "--version", "latest"], capsys)
    assert code == 1 and "latest" in err
    code, _, err = run_cli(["images", "build", "--variant", "tpu"], capsys)
    assert code == 1 and "tpu" in err
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens on discard
    code, _, err = run_cli(["images", "push", "--variant", "cpu", "--builder", "docker"], capsys)
    assert code == 1 and "no image builder found (tried docker)" in err


def test_compiled_pipelines_hold_no_secret_values(tmp_path):
    from pipelines.factory import compile_pipeline
    from pipelines.platform import profile_names

    for profile in profile_names():
        path = Path(compile_pipeline("vae", str(tmp_path / f"{profile}.yaml"), profile))
        text = path.read_text()
        for secret in FAKE_SECRETS.values():
            assert secret not in text, (profile, secret)
        assert "genpipe-s3" in text  # credentials are referenced by Secret name instead


def test_deploy_rejects_bad_options_before_asking_mlflow(capsys, monkeypatch):
    """A bad --profile or --runtime is one error line naming it, before any MLflow call (no
    tracking URI is set here: reaching MLflow would fail with a different message)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = run_cli(["deploy", "vae@champion", "--profile", "tpu-pod"], capsys)
    assert code == 1 and "tpu-pod" in err and "MLFLOW_TRACKING_URI" not in err and not out
    code, out, err = run_cli(["deploy", "vae@champion", "--runtime", "Bad_Name"], capsys)
    assert code == 1 and "--runtime 'Bad_Name'" in err and "genpipe-mlserver" in err
    assert "MLFLOW_TRACKING_URI" not in err and not out
    code, _, err = run_cli(["deploy", "vae@champion"], capsys)
    assert code == 1 and "MLFLOW_TRACKING_URI is not set" in err
