"""The embedded MLflow always authenticates (no flag): anonymous callers, whether our own uid
without the credentials or another local user, and wrong passwords get 401 on the REST API and
on the artifact proxy (a PUT there could swap a registered model's python_model.pkl, which is
unpickled on load); the credentials `env()` exports work."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
import uuid

import mlflow
import mlflow.pyfunc
import pytest
from mlflow import MlflowClient

from genpipe.ops import mlflow_auth
from genpipe.ops import stack as zstack
from tests.as_user import NOBODY, can_switch_user, run_as


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):  # noqa: ARG002 - the pyfunc signature
        return model_input


@pytest.fixture(scope="module")
def logged_model(stack) -> tuple[str, bytes]:
    """(proxy URL of a real logged model's python_model.pkl, its bytes)."""
    env = stack.env  # exported to os.environ by the fixture: the fluent API uses it
    exp = MlflowClient().create_experiment(f"auth-{uuid.uuid4().hex[:6]}")
    with mlflow.start_run(experiment_id=exp):
        # pip_requirements given: no environment inference (slow, and irrelevant here)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_Echo(), pip_requirements=["mlflow"]
        )
    location = MlflowClient().get_logged_model(info.model_id).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    path = location.removeprefix("mlflow-artifacts:").lstrip("/")
    url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow-artifacts/artifacts/{path}/python_model.pkl"
    status, body = _request(url, _basic(env))
    assert status == 200, status
    return url, body


def _basic(env: dict[str, str], password: str | None = None) -> dict[str, str]:
    # .get: on a stack without auth (the old default) the probes below still run, and fail
    user = env.get("MLFLOW_TRACKING_USERNAME", "")
    pw = env.get("MLFLOW_TRACKING_PASSWORD", "") if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def _request(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", data: bytes | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, b""


def _anonymous_probe(api_url: str, artifact_url: str) -> dict[str, int]:
    """What an anonymous caller gets (runs in a child with an empty environment)."""
    return {
        "api": _request(api_url)[0],
        "artifact_get": _request(artifact_url)[0],
        "artifact_put": _request(artifact_url, method="PUT", data=b"cos\nsystem\n(S'id'\ntR.")[0],
        "bearer": _request(api_url, {"Authorization": "Bearer x"})[0],
    }


REFUSED = {"api": 401, "artifact_get": 401, "artifact_put": 401, "bearer": 401}


def _api_url(stack) -> str:
    return f"{stack.env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"


def test_anonymous_own_uid_is_refused_without_any_flag(stack, logged_model) -> None:
    """The session stack is started with a plain `up` (tests/conftest.py)."""
    url, original = logged_model
    assert run_as(None, _anonymous_probe, _api_url(stack), url) == REFUSED
    assert _request(url, _basic(stack.env)) == (200, original)  # nothing was replaced


@pytest.mark.skipif(not can_switch_user(), reason="becoming uid 65534 needs root")
def test_anonymous_other_user_is_refused(stack, logged_model) -> None:
    url, original = logged_model
    assert run_as(NOBODY, _anonymous_probe, _api_url(stack), url) == REFUSED
    assert _request(url, _basic(stack.env)) == (200, original)


def test_wrong_password_and_wrong_user_are_refused(stack, logged_model) -> None:
    url, original = logged_model
    env = stack.env
    wrong = _basic(env, password=env.get("MLFLOW_TRACKING_PASSWORD", "")[:-1] + "x")
    assert _request(_api_url(stack), wrong)[0] == 401
    assert _request(url, wrong)[0] == 401
    assert _request(url, wrong, method="PUT", data=b"evil")[0] == 401
    other_user = {
        "Authorization": "Basic "
        + base64.b64encode(f"root:{env.get('MLFLOW_TRACKING_PASSWORD')}".encode()).decode()
    }
    assert _request(_api_url(stack), other_user)[0] == 401
    assert _request(url, _basic(env)) == (200, original)


def test_refusal_prompts_a_browser_for_basic_auth(stack) -> None:
    """The MLflow UI keeps working: a browser gets the Basic prompt, then the page."""
    req = urllib.request.Request(stack.env["MLFLOW_TRACKING_URI"] + "/")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    with e.value:
        assert e.value.code == 401
        assert e.value.headers["WWW-Authenticate"].startswith("Basic")
    status, body = _request(stack.env["MLFLOW_TRACKING_URI"] + "/", _basic(stack.env))
    assert status == 200 and b"<html" in body.lower()


def test_exported_credentials_drive_tracking_registry_and_artifacts(stack, monkeypatch) -> None:
    env = zstack.env(stack.state_dir)
    assert env["MLFLOW_TRACKING_USERNAME"] and len(env["MLFLOW_TRACKING_PASSWORD"]) >= 43
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = c.create_experiment(f"auth-{uuid.uuid4().hex[:6]}")
    run = c.create_run(exp)
    c.log_metric(run.info.run_id, "m", 1.0)
    c.log_text(run.info.run_id, "hello", "note.txt")  # a PUT through the artifact proxy
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "hello"
    name = f"auth-model-{uuid.uuid4().hex[:6]}"
    c.create_registered_model(name)
    assert c.get_registered_model(name).name == name
    # Without the password the same client is refused.
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(mlflow.exceptions.MlflowException, match="401|not authenticated"):
        MlflowClient(env["MLFLOW_TRACKING_URI"]).get_registered_model(name)


def test_server_uses_the_cheap_auth_function(stack) -> None:
    """Our constant-time check, not MLflow's scrypt-per-request default; the secret is kept
    out of the ini and in 0600 files."""
    ini = (stack.state_dir / "mlflow-auth.ini").read_text()
    assert f"authorization_function = {mlflow_auth.FUNCTION}" in ini
    assert stack.env["MLFLOW_TRACKING_PASSWORD"] not in ini
    for name in ("mlflow-auth.json", "mlflow-auth.db", "mlflow-auth.ini"):
        mode = (stack.state_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_up_restarts_an_mlflow_started_without_our_auth(stack) -> None:
    """A stack an older version started (no auth, or scrypt basic auth) does not stay open:
    the next `up` replaces its MLflow. Last in this file: it restarts the session's MLflow."""
    ini = stack.state_dir / "mlflow-auth.ini"
    before = zstack.status(stack.state_dir).service("mlflow").pid
    # what `up --auth` of the previous version wrote
    ini.write_text(ini.read_text().replace(mlflow_auth.FUNCTION, "mlflow.server.auth:x"))
    zstack.up(stack.state_dir)
    after = zstack.status(stack.state_dir).service("mlflow")
    assert after.healthy and after.pid != before
    assert f"authorization_function = {mlflow_auth.FUNCTION}" in ini.read_text()
    assert _request(_api_url(stack))[0] == 401
    assert _request(_api_url(stack), _basic(stack.env))[0] == 200
