"""MLflow with basic authentication in the embedded stack: anonymous and wrong credentials
are refused for real; the exported client credentials work for tracking and the registry."""

import urllib.error
import urllib.request
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from zoo import stack as zstack


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("genpipe-auth-home")
    try:
        zstack.up(state, ports=zstack.free_ports(), auth=True)
        yield state, zstack.env(state)
    finally:
        zstack.down(state, timeout=3)


def _status(url: str, auth: tuple[str, str] | None) -> int:
    req = urllib.request.Request(url)
    if auth:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_mlflow_refuses_anonymous_and_wrong_password(auth_stack):
    _, env = auth_stack
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(url, None) == 401
    assert _status(url, (env["MLFLOW_TRACKING_USERNAME"], "wrong-password")) == 401
    assert _status(url, (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])) == 200


def test_mlflow_artifact_proxy_refuses_anonymous_uploads(auth_stack):
    """Without --auth anyone local could PUT a python_model.pkl through MLflow's proxy."""
    _, env = auth_stack
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow-artifacts/artifacts/intruder/model.pkl"
    req = urllib.request.Request(url, data=b"not a model", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    e.value.close()
    assert _status(url, None) == 401


def test_exported_credentials_drive_tracking_and_registry(auth_stack, monkeypatch):
    _, env = auth_stack
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = c.create_experiment(f"auth-{uuid.uuid4().hex[:6]}")
    run = c.create_run(exp)
    c.log_metric(run.info.run_id, "m", 1.0)
    name = f"auth-model-{uuid.uuid4().hex[:6]}"
    c.create_registered_model(name)
    assert c.get_registered_model(name).name == name
    # Without the password the same client is refused.
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient(env["MLFLOW_TRACKING_URI"]).get_registered_model(name)


def test_credentials_file_is_private(auth_stack):
    state, env = auth_stack
    for name in ("mlflow-auth.json", "mlflow-auth.db", "mlflow-auth.ini", "mlflow.db"):
        mode = (state / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert env["MLFLOW_TRACKING_PASSWORD"] not in (state / "mlflow-auth.ini").read_text()
