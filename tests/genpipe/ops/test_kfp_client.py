"""`genpipe submit / schedule / schedules` against a KFP API server that enforces the contract.

The KFP API server is not ours: the real `kfp.Client` talks to `kfp_contract_server`, which
checks every request against KFP's published v2beta1 swagger (paths, methods, query
parameters, bodies with no unknown fields, multipart uploads), answers in the real server's
conventions and, in multi-user mode, authorizes each call with KFP's own (resource, verb)
SubjectAccessReviews against the Role and RoleBinding rendered from k8s/ (`kubectl kustomize`).
Any contract violation fails the test. The tests also check what the client sent: multipart
uploads, the content-hash version name, run and recurring-run bodies, auth headers.
"""

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import kfp_contract_server as kcs
import kfp_server_api
import pytest
import yaml
from cli_helpers import run_cli

from genpipe.ops.kfp_auth import ENV_COOKIE, ENV_HOST, ENV_SA_TOKEN_PATH, ENV_TOKEN, KfpAuth
from genpipe.ops.kfp_client import COMMAND_CALLS, KFP_RBAC, Kfp, KfpError, kfp_rbac_needs
from genpipe.ops.kfp_schedule import cron_expression
from zoo.errors import ConfigError

TOKEN = "kfp-token-should-not-leak"
SA_TOKEN = "projected-token-of-genpipe-retrain"
FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-fake-should-not-leak",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-should-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-should-not-leak",
}
# The Role genpipe shipped before: get/list/create only, on a subresource KFP never checks.
OLD_RULES = [
    {
        "apiGroups": ["pipelines.kubeflow.org"],
        "resources": ["pipelines", "pipelines/versions", "experiments", "runs"],
        "verbs": ["get", "list", "create"],
    }
]


@pytest.fixture
def kfp_server():
    """A standalone (single-user) KFP; small pages so clients must follow next_page_token."""
    with kcs.serve(page_limit=2) as server:
        yield server


def role_namespace(objs: tuple[dict[str, Any], ...]) -> str:
    role = next(
        o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "genpipe-kfp-submitter"
    )
    return role["metadata"]["namespace"]


def with_role_rules(objs: tuple[dict[str, Any], ...], rules: list[dict]) -> list[dict[str, Any]]:
    """The rendered objects with the Role genpipe-kfp-submitter's rules replaced."""
    out = []
    for o in objs:
        if o["kind"] == "Role" and o["metadata"]["name"] == "genpipe-kfp-submitter":
            o = {**o, "rules": rules}
        out.append(o)
    return out


def multi_user_server(objs, **kwargs):
    """Multi-user KFP: the projected token authenticates as SA genpipe/genpipe-retrain, the
    bound CronJob's identity, authorized against `objs` (our rendered manifests)."""
    return kcs.serve(
        multi_user=True,
        rbac=kcs.Rbac(list(objs)),
        tokens={SA_TOKEN: kcs.sa_user("genpipe", "genpipe-retrain")},
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in (ENV_HOST, ENV_TOKEN, ENV_COOKIE, "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(ENV_SA_TOKEN_PATH, str(tmp_path / "no-such-token"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the user's
    for k, v in FAKE_SECRETS.items():
        monkeypatch.setenv(k, v)


def test_submit_uploads_once_per_content_and_creates_runs(kfp_server, capsys):
    kfp_server.expect_auth = ("Authorization", f"Bearer {TOKEN}")
    args = [
        "submit",
        "vae",
        "--host",
        kfp_server.url,
        "--token",
        TOKEN,
        "--preset",
        "tiny",
        "--set",
        "epochs=2",
        "--experiment",
        "exp-a",
        "--name",
        "vae-prod",
        "--profile",
        "gke",
        "--image",
        "registry.example/genpipe:0.1.0-gpu",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    (upload,) = kfp_server.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == ["genpipe-vae"]
    (up_version,) = kfp_server.calls("POST", "/pipelines/upload_version")
    _, content = up_version.upload()
    assert up_version.query["name"] == ["sha256-" + hashlib.sha256(content).hexdigest()[:16]]
    assert up_version.query["pipelineid"] == [next(iter(kfp_server.pipelines))]
    spec = next(yaml.safe_load_all(content))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    # --image is used (its CPU variant may run the steps that need no GPU)
    assert "registry.example/genpipe:0.1.0-gpu" in images
    assert images <= {"registry.example/genpipe:0.1.0-gpu", "registry.example/genpipe:0.1.0-cpu"}
    assert "nvidia.com/gpu" in content.decode()  # the gke profile was compiled in
    (exp,) = kfp_server.calls("POST", "/experiments")
    assert exp.json()["display_name"] == "exp-a"
    (run,) = kfp_server.calls("POST", "/runs")
    body = run.json()
    version_id = next(
        v for v in kfp_server.versions.values() if v["display_name"].startswith("sha256-")
    )["pipeline_version_id"]
    assert body["pipeline_version_reference"] == {
        "pipeline_id": up_version.query["pipelineid"][0],
        "pipeline_version_id": version_id,
    }
    params = body["runtime_config"]["parameters"]
    assert params["overrides"] == json.dumps({"epochs": "2"})
    assert (
        params["preset"],
        params["experiment"],
        params["registered_name"],
        params["source"],
    ) == ("tiny", "exp-a", "vae-prod", "digits")
    assert body["experiment_id"] == next(iter(kfp_server.experiments))
    assert "uploaded" in out and body["display_name"].startswith("vae-")
    # KFP's default version (named after the pipeline, same content) is gone: one per content
    assert [v["display_name"] for v in kfp_server.versions.values()] == [
        up_version.query["name"][0]
    ]
    (delete,) = [r for r in kfp_server.requests if r.method == "DELETE"]
    assert delete.path.startswith(
        f"/apis/v2beta1/pipelines/{up_version.query['pipelineid'][0]}/versions/"
    )

    # Same pipeline again: no upload, the hash-named version is reused, experiment found.
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(kfp_server.calls("POST", "/pipelines/upload")) == 1
    assert len(kfp_server.calls("POST", "/pipelines/upload_version")) == 1
    assert len(kfp_server.calls("POST", "/experiments")) == 1
    runs = kfp_server.calls("POST", "/runs")
    assert (
        len(runs) == 2
        and runs[1].json()["pipeline_version_reference"]["pipeline_version_id"] == version_id
    )
    assert "unchanged, reused" in out

    # A different profile compiles to different YAML: a new version of the same pipeline.
    code, _, err = run_cli([*args[:-4], "--profile", "cpu"], capsys)
    assert code == 0, err
    assert len(kfp_server.calls("POST", "/pipelines/upload")) == 1
    assert len(kfp_server.calls("POST", "/pipelines/upload_version")) == 2

    # Every request carried the token; nothing sent contains a credential from the environment.
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)
    sent = b"".join(r.body for r in kfp_server.requests)
    for secret in FAKE_SECRETS.values():
        assert secret.encode() not in sent
    assert TOKEN.encode() not in sent


def test_submit_wait_streams_states_and_fails_on_failed_run(kfp_server, capsys):
    base = [
        "submit",
        "vae",
        "--host",
        kfp_server.url,
        "--preset",
        "tiny",
        "--wait",
        "--poll",
        "0.01",
    ]
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    assert "PENDING" in err and "RUNNING" in err and "SUCCEEDED" in out
    assert "ingest=SUCCEEDED" in err
    kfp_server.run_states = ["RUNNING", "FAILED"]
    code, out, err = run_cli(base, capsys)
    assert code == 1
    assert "ended FAILED" in err and "/#/runs/details/" in err


def test_submit_rejects_bad_input_before_any_request(kfp_server, capsys, tmp_path):
    url = kfp_server.url
    local = tmp_path / "corpus.txt"
    local.write_text("hello")
    cases = [
        (["submit", "char_rnn", "--host", url, "--data", f"text:{local}"], "cluster cannot read"),
        (["submit", "vae", "--host", url, "--set", "epochs=zero"], "epochs"),
        (["submit", "nope", "--host", url], "nope"),
        (["submit", "vae", "--host", url, "--image", "registry.example/genpipe:latest"], "latest"),
        (["submit", "vae", "--host", url, "--image", "registry.example/genpipe"], "no tag"),
        (["submit", "vae", "--host", "ml-pipeline:8888"], "not a URL"),
        (["submit", "vae"], "--host"),
        (["submit", "vae", "--host", url, "--token", "a", "--cookie", "b=c"], "not both"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 1 and needle in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert kfp_server.requests == []


def test_auth_errors_are_one_line(kfp_server, capsys):
    kfp_server.expect_auth = ("Authorization", "Bearer right")
    code, _, err = run_cli(
        ["schedules", "list", "--host", kfp_server.url, "--token", "wrong", "-n", "team-a"], capsys
    )
    assert code == 1 and "HTTP 401" in err and "check --token/--cookie" in err
    assert len(err.strip().splitlines()) == 1, err


def test_cookie_and_service_account_token_auth(kfp_server, capsys, monkeypatch, tmp_path):
    kfp_server.expect_auth = ("Cookie", "authservice_session=abc")
    monkeypatch.setenv(ENV_COOKIE, "authservice_session=abc")
    monkeypatch.setenv(ENV_HOST, kfp_server.url)
    code, _, err = run_cli(["schedules", "list"], capsys)
    assert code == 0, err
    assert kfp_server.requests and all(
        r.headers.get("cookie") == "authservice_session=abc" for r in kfp_server.requests
    )

    monkeypatch.delenv(ENV_COOKIE)
    token_file = tmp_path / "token"
    token_file.write_text("projected-sa-token\n")
    monkeypatch.setenv(ENV_SA_TOKEN_PATH, str(token_file))
    kfp_server.expect_auth = ("Authorization", "Bearer projected-sa-token")
    kfp_server.requests.clear()
    code, _, err = run_cli(["schedules", "list", "--namespace", "team-a"], capsys)
    assert code == 0, err
    assert kfp_server.requests and all(
        r.headers["authorization"] == "Bearer projected-sa-token" for r in kfp_server.requests
    )
    assert kfp_server.calls("GET", "/recurringruns")[0].query["namespace"] == ["team-a"]
    assert "projected" not in repr(KfpAuth(token="projected-sa-token"))


def add_recurring(server: kcs.KfpContractServer, rid: str, name: str, namespace: str = "") -> None:
    server.recurring[rid] = {
        "recurring_run_id": rid,
        "display_name": name,
        "status": "ENABLED",
        "mode": "ENABLE",
        "max_concurrency": "1",
        "trigger": {"cron_schedule": {"cron": "0 0 1 * * *"}},
        "_namespace": namespace,
        **({"namespace": namespace} if namespace else {}),
    }


def test_schedule_cron_replaces_same_name_and_manage_schedules(kfp_server, capsys):
    url = kfp_server.url
    # Other schedules exist, so listing needs several pages (at most 2 per page).
    for i in range(3):
        add_recurring(kfp_server, f"rr-other-{i}", f"other-{i}")
    code, out, err = run_cli(
        [
            "schedule",
            "vae",
            "--cron",
            "0 0 3 * * *",
            "--host",
            url,
            "--preset",
            "tiny",
            "--name",
            "nightly",
            "--registered-name",
            "vae-prod",
        ],
        capsys,
    )
    assert code == 0, err
    (create,) = kfp_server.calls("POST", "/recurringruns")
    body = create.json()
    assert body["display_name"] == "nightly"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    # int64 fields: protojson on the server accepts a number or a string.
    assert (body["mode"], int(body["max_concurrency"]), body["no_catchup"]) == ("ENABLE", 1, True)
    assert body["runtime_config"]["parameters"]["preset"] == "tiny"
    assert body["runtime_config"]["parameters"]["registered_name"] == "vae-prod"
    ref = body["pipeline_version_reference"]
    assert kfp_server.versions[ref["pipeline_version_id"]]["display_name"].startswith("sha256-")
    first_id = next(k for k, v in kfp_server.recurring.items() if v["display_name"] == "nightly")

    # Re-scheduling the same name: the new recurring run is created, then the old one deleted.
    code, out, err = run_cli(
        [
            "schedule",
            "vae",
            "--every",
            "1d",
            "--host",
            url,
            "--preset",
            "tiny",
            "--schedule-name",
            "nightly",
        ],
        capsys,
    )
    assert code == 0, err
    assert "replaced 1 previous" in out
    (delete,) = kfp_server.calls("DELETE", f"/recurringruns/{first_id}")
    creates = kfp_server.calls("POST", "/recurringruns")
    assert kfp_server.requests.index(creates[1]) < kfp_server.requests.index(delete)
    trigger = creates[1].json()["trigger"]
    assert list(trigger) == ["periodic_schedule"]
    assert int(trigger["periodic_schedule"]["interval_second"]) == 86400
    nightly = [r for r in kfp_server.recurring.values() if r["display_name"] == "nightly"]
    assert len(nightly) == 1 and len(kfp_server.recurring) == 4
    assert len(kfp_server.calls("POST", "/pipelines/upload_version")) == 1  # same content

    code, out, err = run_cli(["schedules", "list", "--host", url], capsys)
    assert code == 0, err
    assert "nightly" in out and "every 86400s" in out and "other-2" in out
    assert len(kfp_server.calls("GET", "/recurringruns")) >= 3  # followed next_page_token

    (nid,) = (r["recurring_run_id"] for r in nightly)
    assert run_cli(["schedules", "pause", "nightly", "--host", url], capsys)[0] == 0
    assert kfp_server.recurring[nid]["status"] == "DISABLED"
    assert kfp_server.calls("POST", f"/recurringruns/{nid}:disable")
    assert run_cli(["schedules", "resume", "nightly", "--host", url], capsys)[0] == 0
    assert kfp_server.recurring[nid]["status"] == "ENABLED"
    assert run_cli(["schedules", "delete", "nightly", "--host", url], capsys)[0] == 0
    assert nid not in kfp_server.recurring and len(kfp_server.recurring) == 3
    code, _, err = run_cli(["schedules", "delete", "nightly", "--host", url], capsys)
    assert code == 1 and "no recurring run named 'nightly'" in err and "other-0" in err


def test_schedule_rejects_bad_triggers_before_any_request(kfp_server, capsys):
    url = kfp_server.url
    cases = [
        (["schedule", "vae", "--cron", "0 3 * * *", "--host", url], "has 5 fields"),
        (["schedule", "vae", "--cron", "0 3 * * *", "--host", url], "did you mean '0 0 3 * * *'"),
        (
            ["schedule", "vae", "--cron", "0 0 25 * * *", "--host", url],
            "hours '25' is out of range; valid: 0-23",
        ),
        (
            ["schedule", "vae", "--cron", "0 61 * * * *", "--host", url],
            "minutes '61' is out of range; valid: 0-59",
        ),
        (
            ["schedule", "vae", "--cron", "0 0 0 32 * *", "--host", url],
            "day-of-month '32' is out of range; valid: 1-31",
        ),
        (
            ["schedule", "vae", "--cron", "0 0 0 * 0 *", "--host", url],
            "month '0' is out of range; valid: 1-12 or names jan-dec",
        ),
        (
            ["schedule", "vae", "--cron", "0 0 0 * * 7", "--host", url],
            "day-of-week '7' is out of range; valid: 0-6 or names sun-sat",
        ),
        (
            ["schedule", "vae", "--cron", "0 0 0 * * mon-xyz", "--host", url],
            "'xyz', which is not a number or a name",
        ),
        (
            ["schedule", "vae", "--cron", "*/0 * * * * *", "--host", url],
            "seconds '*/0' has step '0'",
        ),
        (
            ["schedule", "vae", "--cron", "0 0 5-1 * * *", "--host", url],
            "hours '5-1' starts after it ends",
        ),
        (["schedule", "vae", "--cron", "@fortnightly", "--host", url], "unknown descriptor"),
        (["schedule", "vae", "--host", url], "exactly one"),
        (
            ["schedule", "vae", "--cron", "0 0 3 * * *", "--every", "24h", "--host", url],
            "exactly one",
        ),
        (["schedule", "vae", "--every", "daily", "--host", url], "not a duration"),
        (["schedule", "vae", "--every", "30s", "--host", url], "minimum interval"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 1 and needle in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert kfp_server.requests == []


# Specs robfig/cron v1 (KFP's parser) accepts or refuses, to hold our local check to it.
CRON_CORPUS = [
    "0 0 3 * * *", "*/15 * * * * *", "0 0 9 ? * MON-FRI", "0 30 8 1,15 jan-jun *",
    "0 0 0 1 1 *", "59 59 23 31 12 6", "0 0 12 * * sun,sat", "1-59/2 * * * * *", "0 5/10 * * * *",
    "0 0 0 L * *", "0 0 0 * * 1#2", "0 0 24 * * *", "60 0 0 * * *", "0 0 0 0 * *", "0 0 0 * 13 *",
    "0 0 0 * * 7", "0 0 0 * * mon-foo", "*/0 * * * * *", "5-1 * * * * *", "1-2-3 * * * * *",
    "1/2/3 * * * * *", "-1 * * * * *", "0 0 0 * * ,", "0 0 0 1,,2 * *", "a * * * * *",
    "@daily", "@midnight", "@hourly", "@weekly", "@monthly", "@yearly", "@annually",
    "@every 1h30m", "@every 90s", "@every 1.5h", "@every 0", "@every 1x", "@every", "@fortnightly",
]  # fmt: skip


@pytest.mark.parametrize("spec", CRON_CORPUS)
def test_local_cron_check_agrees_with_kfps_parser(spec):
    upstream_ok = kcs.robfig_parse(spec) == ""
    try:
        cron_expression(spec)
        ours_ok = True
    except ConfigError:
        ours_ok = False
    assert ours_ok == upstream_ok, (spec, kcs.robfig_parse(spec))


def raw(
    server: kcs.KfpContractServer,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = "application/json",
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(server.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        # No HTTP(S)_PROXY from the environment: the server is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_contract_server_refuses_what_kfp_refuses():
    """The validation is real: what grpc-gateway/protojson refuse is refused (and recorded)."""
    server = kcs.KfpContractServer()
    with server.serving():
        exp = raw(server, "POST", "/apis/v2beta1/experiments", {"display_name": "e"})[1]
        eid = exp["experiment_id"]
        bad = [
            (
                "POST",
                "/apis/v2beta1/experiments",
                {"display_name": "x", "color": "red"},
                "unknown field 'color'",
            ),
            (
                "POST",
                "/apis/v2beta1/experiments",
                {"displayName": "x", "display_name": "y"},
                "given twice",
            ),
            ("POST", "/apis/v2beta1/experiments", {"display_name": 7}, "expected a string"),
            (
                "POST",
                "/apis/v2beta1/experiments",
                {"display_name": "x", "created_at": "yesterday"},
                "RFC 3339",
            ),
            (
                "POST",
                "/apis/v2beta1/experiments",
                {"display_name": "x", "storage_state": "GONE"},
                "is not one of",
            ),
            (
                "POST",
                "/apis/v2beta1/recurringruns",
                {"display_name": "r", "experiment_id": eid, "max_concurrency": "one"},
                "expected an integer",
            ),
            (
                "POST",
                "/apis/v2beta1/recurringruns",
                {
                    "display_name": "r",
                    "trigger": {
                        "cron_schedule": {"cron": "@daily"},
                        "periodic_schedule": {"interval_second": 60},
                    },
                },
                "oneof",
            ),
            (
                "POST",
                "/apis/v2beta1/recurringruns",
                {"display_name": "r", "trigger": {"cron": "@daily"}},
                "unknown field 'cron'",
            ),
            ("GET", "/apis/v2beta1/pipelines?namespaces=a", None, "'namespaces' is not declared"),
            ("GET", "/apis/v2beta1/pipelines?page_size=ten", None, "not an integer"),
            (
                "DELETE",
                "/apis/v2beta1/recurringruns/x?propagation_policy=SOON",
                None,
                "is not one of",
            ),
            (
                "GET",
                "/apis/v2beta1/pipelines?filter="
                + urllib.parse.quote(json.dumps({"predicates": [{"key": "name", "op": "EQUALS"}]})),
                None,
                "unknown field 'op'",
            ),
            ("POST", "/apis/v2beta1/experiments", b"display_name=x", "takes application/json"),
            ("GET", "/apis/v2beta1/pipeline", None, "no such path"),
            ("PUT", "/apis/v2beta1/pipelines", None, "no such method"),
        ]
        for method, path, body, needle in bad:
            ctype = (
                "application/x-www-form-urlencoded"
                if isinstance(body, bytes)
                else "application/json"
            )
            status, answer = raw(server, method, path, body, ctype)
            assert status in (400, 404), (path, status, answer)
            assert any(needle in v for v in server.violations), (needle, server.violations)
            if status == 400:
                assert answer["code"] == 3 and answer["details"][0]["@type"].endswith("api.Error")
            server.violations.clear()
        # What protojson accepts is accepted: JSON-name aliases, int64 as a string, enum numbers.
        status, job = raw(
            server,
            "POST",
            "/apis/v2beta1/recurringruns",
            {
                "displayName": "r",
                "experimentId": eid,
                "maxConcurrency": "2",
                "mode": 1,
                "trigger": {"periodicSchedule": {"intervalSecond": 3600}},
                "pipelineSpec": {"root": {}, "pipelineInfo": {"name": "p"}},
            },
        )
        assert status == 200, job
        assert job["max_concurrency"] == "2" and job["status"] == "ENABLED"  # int64 out: string
        # A cron robfig/cron refuses: 400 InvalidArgument with KFP's message.
        status, answer = raw(
            server,
            "POST",
            "/apis/v2beta1/recurringruns",
            {
                "display_name": "r",
                "experiment_id": eid,
                "max_concurrency": 1,
                "trigger": {"cron_schedule": {"cron": "0 0 25 * * *"}},
                "pipeline_spec": {},
            },
        )
        assert status == 400 and "Schedule cron is not a supported format" in answer["message"]
        # Undeclared multipart fields on the upload endpoint.
        boundary = "XyZ"
        form = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="uploadfile"; filename="p.yaml"\r\n\r\n'
            "pipelineInfo: {name: p}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="extra"\r\n\r\nx\r\n--{boundary}--\r\n'
        ).encode()
        status, answer = raw(
            server,
            "POST",
            "/apis/v2beta1/pipelines/upload?name=p",
            form,
            f"multipart/form-data; boundary={boundary}",
        )
        assert status == 400 and "'extra' is not declared" in answer["error_message"]
        assert server.violations and server.server_errors == []
        server.violations.clear()


@pytest.fixture
def sa_token(monkeypatch, tmp_path) -> Path:
    """The projected ServiceAccount token file, as the retrain CronJob mounts it."""
    path = tmp_path / "kfp-token"
    path.write_text(SA_TOKEN + "\n")
    monkeypatch.setenv(ENV_SA_TOKEN_PATH, str(path))
    return path


def test_multi_user_scenario_with_our_role(capsys, sa_token):
    """Done-when scenario: a ServiceAccount bound to our Role submits twice, schedules,
    reschedules with a bad cron, lists/pauses/resumes/deletes, against the swagger-validating
    server in multi-user mode: zero contract violations, no denied review, and every
    (resource, verb) the Role grants is used (least privilege)."""
    objs = kcs.rendered("cpu")
    ns = role_namespace(objs)
    with multi_user_server(objs) as server:
        common = ["--host", server.url, "--namespace", ns, "--preset", "tiny"]
        seen: dict[str, set[tuple[str, str]]] = {}

        def step(command: str, args: list[str], ok: bool = True) -> str:
            before = len(server.reviews)
            code, out, err = run_cli(args, capsys)
            assert (code == 0) == ok, (args, err)
            pairs = {(r["resource"], r["verb"]) for r in server.reviews[before:]}
            assert pairs <= kfp_rbac_needs((command,)), (command, pairs)
            seen.setdefault(command, set()).update(pairs)
            return out + err

        out = step("submit", ["submit", "vae", *common, "--wait", "--poll", "0.01"])
        assert "(uploaded)" in out and "SUCCEEDED" in out
        assert "unchanged, reused" in step("submit", ["submit", "vae", *common])
        assert len(server.runs) == 2
        out = step(
            "schedule", ["schedule", "vae", "--cron", "0 0 3 * * *", "--name", "nightly", *common]
        )
        assert "scheduled nightly" in out
        (old_id,) = server.recurring
        n = len(server.requests)
        err = step(
            "schedule",
            ["schedule", "vae", "--cron", "0 0 25 * * *", "--name", "nightly", *common],
            ok=False,
        )
        assert "hours '25' is out of range; valid: 0-23" in err
        assert len(server.requests) == n and list(server.recurring) == [old_id]  # untouched
        out = step(
            "schedule", ["schedule", "vae", "--cron", "0 30 3 * * *", "--name", "nightly", *common]
        )
        assert "replaced 1 previous" in out and old_id not in server.recurring
        conn = ["--host", server.url, "--namespace", ns]
        assert "nightly" in step("schedules list", ["schedules", "list", *conn])
        (nid,) = server.recurring
        step("schedules pause", ["schedules", "pause", "nightly", *conn])
        assert server.recurring[nid]["status"] == "DISABLED"
        step("schedules resume", ["schedules", "resume", "nightly", *conn])
        assert server.recurring[nid]["status"] == "ENABLED"
        step("schedules delete", ["schedules", "delete", "nightly", *conn])
        assert server.recurring == {}

        assert server.denied() == []
        assert {r["user"] for r in server.reviews} == {
            "system:serviceaccount:genpipe:genpipe-retrain"
        }
        assert {r["namespace"] for r in server.reviews} == {ns}
        # Each command was checked for nothing KFP_RBAC does not list for it (`step`), and
        # together they used every pair the table lists: nothing in it is unused.
        assert set().union(*seen.values()) == kfp_rbac_needs()
        # The default version delete names the pipeline (what resourceNames scope in the Role).
        (delete,) = [
            r for r in server.reviews if r["verb"] == "delete" and r["resource"] == "pipelines"
        ]
        assert delete["name"] == "genpipe-vae"


def test_old_role_is_denied_deleting_kfps_default_version(capsys, sa_token):
    """The Role genpipe shipped (get/list/create) fails the first submit with HTTP 403."""
    objs = kcs.rendered("cpu")
    ns = role_namespace(objs)
    with multi_user_server(with_role_rules(objs, OLD_RULES)) as server:
        code, _, err = run_cli(
            ["submit", "vae", "--host", server.url, "--namespace", ns, "--preset", "tiny"], capsys
        )
        assert code == 1 and "HTTP 403" in err and "delete the default pipeline version" in err
        assert len(err.strip().splitlines()) == 1, err
        (denied,) = server.denied()
        assert (denied["resource"], denied["verb"], denied["namespace"]) == (
            "pipelines",
            "delete",
            ns,
        )
        assert server.runs == {}


def test_reschedule_keeps_the_old_schedule_when_the_server_refuses(capsys, sa_token, tmp_path):
    """Create-then-delete: a recurring run the server refuses leaves the old one in place,
    whether KFP's cron parser refuses it or the caller may not create recurring runs."""
    objs = kcs.rendered("cpu")
    ns = role_namespace(objs)
    with multi_user_server(objs) as server:
        common = ["--host", server.url, "--namespace", ns, "--preset", "tiny", "--name", "nightly"]
        assert run_cli(["schedule", "vae", "--cron", "0 0 3 * * *", *common], capsys)[0] == 0
        (old_id,) = server.recurring
        old = dict(server.recurring[old_id])

        # Past the CLI's check: KFP's own parser refuses the cron (400), nothing is deleted.
        kfp = Kfp(server.url, KfpAuth(token_path=str(sa_token)), ns)
        pid, vid, _, _ = kfp.ensure_pipeline_version(package_of(server, tmp_path))
        exp = kfp.experiment_id("genpipe-vae")
        with pytest.raises(
            KfpError,
            match=r"HTTP 400 .*Schedule cron is not a supported format.*End of range \(25\) above maximum \(23\)",
        ):
            kfp.schedule("nightly", exp, pid, vid, {}, cron="0 0 25 * * *")
        assert server.recurring == {old_id: old}
        assert not [
            r for r in server.requests if r.method == "DELETE" and "recurringruns" in r.path
        ]

    # A Role without `create` on jobs: KFP answers 403, the old schedule stays.
    rules = [
        dict(r)
        for r in next(
            o
            for o in objs
            if o["kind"] == "Role" and o["metadata"]["name"] == "genpipe-kfp-submitter"
        )["rules"]
    ]
    for r in rules:
        if r["resources"] == ["jobs"]:
            r["verbs"] = [v for v in r["verbs"] if v != "create"]
    with multi_user_server(with_role_rules(objs, rules)) as server:
        add_recurring(server, "rr-old", "nightly", ns)
        common[1] = server.url
        code, _, err = run_cli(["schedule", "vae", "--every", "24h", *common], capsys)
        assert code == 1 and "HTTP 403" in err and "create recurring run" in err
        assert list(server.recurring) == ["rr-old"]
        assert [(d["resource"], d["verb"]) for d in server.denied()] == [("jobs", "create")]


def package_of(server: kcs.KfpContractServer, where: Path) -> Path:
    """A compiled package with the content the server already holds (no re-compile)."""
    (vid,) = [v for v, x in server.versions.items() if x["name"].startswith("sha256-")]
    path = where / "vae.yaml"
    path.write_bytes(server.packages[vid])
    return path


def test_every_kfp_call_is_in_the_rbac_table():
    """KFP_RBAC covers every method the CLI calls, and nothing that no command calls."""
    called = {m for methods in COMMAND_CALLS.values() for m in methods}
    assert called == set(KFP_RBAC)
    assert all(hasattr(Kfp, m) for m in called)


def test_concurrent_upload_of_the_same_content_reuses_the_version(kfp_server, capsys):
    args = ["submit", "vae", "--host", kfp_server.url, "--preset", "tiny"]
    assert run_cli(args, capsys)[0] == 0  # creates the pipeline
    kfp_server.versions.clear()  # as if the version had been deleted meanwhile ...

    def race(server: kcs.KfpContractServer, req: kcs.Request) -> None:
        # ... and another client uploads the same content just before our upload.
        if req.operation == "UploadPipelineVersion":
            server.before = None
            server.add_version(req.query["pipelineid"][0], req.query["name"][0], req.upload()[1])

    kfp_server.before = race
    code, out, err = run_cli([*args, "--set", "epochs=1"], capsys)
    assert code == 0, err
    (race_req,) = kfp_server.calls("POST", "/pipelines/upload_version")[1:]
    (version,) = kfp_server.versions.values()
    assert version["display_name"] == race_req.query["name"][0]
    runs = kfp_server.calls("POST", "/runs")
    assert (
        runs[-1].json()["pipeline_version_reference"]["pipeline_version_id"]
        == version["pipeline_version_id"]
    )
    assert "unchanged, reused" in out


def test_role_deletes_versions_of_genpipes_pipelines_only(sa_token):
    """`delete` on pipelines is scoped by resourceNames (KFP names the pipeline in the review):
    the ServiceAccount cannot delete another team's pipeline versions in the namespace."""
    objs = kcs.rendered("cpu")
    ns = role_namespace(objs)
    with multi_user_server(objs) as server:
        content = b"pipelineInfo: {name: other}\nroot: {}\n"
        for name in ("someone-elses", "genpipe-vae"):
            server.pipelines[name] = {
                "pipeline_id": name,
                "name": name,
                "display_name": name,
                "namespace": ns,
                "created_at": kcs.now(),
            }
            server.add_version(name, "v1", content)
        kfp = Kfp(server.url, KfpAuth(token_path=str(sa_token)), ns)
        ids = {v["pipeline_id"]: k for k, v in server.versions.items()}
        with pytest.raises(kfp_server_api.ApiException) as denied:
            kfp.client.delete_pipeline_version("someone-elses", ids["someone-elses"])
        assert denied.value.status == 403
        body = json.loads(denied.value.body)
        assert body["code"] == 7 and "Resource:pipelines" in body["details"][0]["error_message"]
        kfp.client.delete_pipeline_version("genpipe-vae", ids["genpipe-vae"])
        assert set(server.versions) == {ids["someone-elses"]}
        assert [(d["verb"], d["name"]) for d in server.denied()] == [("delete", "someone-elses")]
