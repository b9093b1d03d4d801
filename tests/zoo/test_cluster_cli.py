"""`genpipe submit / schedule / schedules` against a local HTTP server playing the KFP API.

The KFP API server is not ours, so the real `kfp.Client` talks to a small in-memory
implementation of the v2beta1 REST endpoints it calls; every request is recorded and the
tests check what the client really sent: multipart pipeline uploads, the content-hash version
name, run and recurring-run bodies (cron, interval, parameters) and the auth headers.
"""

import email.parser
import email.policy
import hashlib
import json
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from zoo import cli
from zoo.kfp_client import ENV_COOKIE, ENV_HOST, ENV_SA_TOKEN_PATH, ENV_TOKEN, KfpAuth

API = "/apis/v2beta1"
TOKEN = "kfp-token-should-not-leak"
FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-fake-should-not-leak",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-should-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-should-not-leak",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upload(self) -> tuple[str, bytes]:
        """(filename, content) of the multipart `uploadfile` part."""
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode() + self.body
        )
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_filename(), part.get_payload(decode=True)
        raise AssertionError("no uploadfile part in the multipart body")


@dataclass
class FakeKfp:
    """In-memory KFP v2beta1 API: pipelines, versions, experiments, runs, recurring runs."""

    expect_auth: tuple[str, str] | None = None  # (header, value) every request must carry
    page_size: int = 2  # small pages, so clients must follow next_page_token
    run_states: list[str] = field(default_factory=lambda: ["PENDING", "RUNNING", "SUCCEEDED"])
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    packages: dict[str, bytes] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring: dict[str, dict] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    race_upload: bool = False

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    @staticmethod
    def _name_filter(req: Request) -> str | None:
        raw = req.query.get("filter", [""])[0]
        if not raw:
            return None
        (pred,) = json.loads(raw)["predicates"]
        # kfp's own helpers send the enum number (EQUALS = 1), genpipe the name; KFP takes both.
        assert pred["operation"] in ("EQUALS", 1) and pred["key"] == "display_name", pred
        return pred["stringValue"]

    def handle(self, req: Request) -> tuple[int, Any]:
        self.requests.append(req)
        if self.expect_auth:
            header, value = self.expect_auth
            if req.headers.get(header.lower()) != value:
                return 401, {"error": "unauthenticated", "code": 16, "message": "no valid token"}
        p, m = req.path.removeprefix(API), req.method
        if (m, p) == ("GET", "/healthz"):
            return 200, {"multi_user": False}
        if (m, p) == ("GET", "/pipelines"):
            want = self._name_filter(req)
            return 200, {
                "pipelines": [
                    x for x in self.pipelines.values() if want in (None, x["display_name"])
                ]
            }
        if (m, p) == ("POST", "/pipelines/upload"):
            name = req.query["name"][0]
            _, content = req.upload()
            pid = uuid.uuid4().hex
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name}
            self._add_version(pid, name, content)  # KFP adds a default version
            return 200, self.pipelines[pid]
        if (m, p) == ("POST", "/pipelines/upload_version"):
            pid = req.query["pipelineid"][0]
            assert pid in self.pipelines
            _, content = req.upload()
            if self.race_upload:  # another client uploads the same version first
                self.race_upload = False
                self._add_version(pid, req.query["name"][0], content)
            name = req.query["name"][0]
            if any(
                v["pipeline_id"] == pid and v["display_name"] == name
                for v in self.versions.values()
            ):
                return 409, {
                    "error": "exists",
                    "code": 6,
                    "message": f"version {name} already exists",
                }
            return 200, self._add_version(pid, req.query["name"][0], content)
        if m == "GET" and p.startswith("/pipelines/") and p.endswith("/versions"):
            pid = p.split("/")[2]
            want = self._name_filter(req)
            vs = [
                v
                for v in self.versions.values()
                if v["pipeline_id"] == pid and want in (None, v["display_name"])
            ]
            return 200, {"pipeline_versions": vs}
        if m == "DELETE" and p.startswith("/pipelines/") and "/versions/" in p:
            pid, vid = p.split("/")[2], p.split("/")[4]
            if self.versions.get(vid, {}).get("pipeline_id") != pid:
                return 404, {"error": "not found", "code": 5, "message": f"version {vid}"}
            del self.versions[vid]
            return 200, {}
        if (m, p) == ("GET", "/experiments"):
            want = self._name_filter(req)
            return 200, {
                "experiments": [
                    e for e in self.experiments.values() if want in (None, e["display_name"])
                ]
            }
        if (m, p) == ("POST", "/experiments"):
            eid = uuid.uuid4().hex
            self.experiments[eid] = {**req.json(), "experiment_id": eid}
            return 200, self.experiments[eid]
        if (m, p) == ("POST", "/runs"):
            rid = uuid.uuid4().hex
            self.runs[rid] = {**req.json(), "run_id": rid, "state": self.run_states[0]}
            return 200, self.runs[rid]
        if m == "GET" and p.startswith("/runs/"):
            rid = p.split("/")[2]
            i = self.polls[rid] = self.polls.get(rid, -1) + 1
            state = self.run_states[min(i, len(self.run_states) - 1)]
            tasks = [{"display_name": "ingest", "state": "SUCCEEDED" if i else "RUNNING"}]
            return 200, {**self.runs[rid], "state": state, "run_details": {"task_details": tasks}}
        if (m, p) == ("GET", "/recurringruns"):
            items = sorted(self.recurring.values(), key=lambda r: r["recurring_run_id"])
            start = int(req.query.get("page_token", ["0"])[0] or 0)
            page = items[start : start + self.page_size]
            nxt = str(start + self.page_size) if start + self.page_size < len(items) else ""
            # The real server's JSON key (kfp_server_api maps recurring_runs <- recurringRuns).
            return 200, {"recurringRuns": page, "total_size": len(items), "next_page_token": nxt}
        if (m, p) == ("POST", "/recurringruns"):
            rid = "rr-" + uuid.uuid4().hex
            body = req.json()
            self.recurring[rid] = {
                **body,
                "recurring_run_id": rid,
                "status": "ENABLED" if body["mode"] == "ENABLE" else "DISABLED",
            }
            return 200, self.recurring[rid]
        if p.startswith("/recurringruns/"):
            rid, _, verb = p.split("/")[2].partition(":")
            if rid not in self.recurring:
                return 404, {
                    "error": "not found",
                    "code": 5,
                    "message": f"recurring run {rid} not found",
                }
            if m == "DELETE":
                del self.recurring[rid]
            elif (m, verb) == ("POST", "disable"):
                self.recurring[rid]["status"] = "DISABLED"
            elif (m, verb) == ("POST", "enable"):
                self.recurring[rid]["status"] = "ENABLED"
            return 200, {}
        return 404, {"error": f"unexpected {m} {p}", "code": 5, "message": f"unexpected {m} {p}"}

    def _add_version(self, pid: str, name: str, content: bytes) -> dict:
        vid = uuid.uuid4().hex
        self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name}
        self.packages[vid] = content
        return self.versions[vid]


@pytest.fixture
def kfp_server():
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = Request(
                self.command,
                url.path,
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
            try:
                status, payload = fake.handle(req)
            except Exception as e:  # an unexpected request: fail the test, answer 500
                fake.errors.append(f"{req.method} {req.path}: {e!r}")
                status, payload = 500, {"error": repr(e), "code": 13, "message": repr(e)}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert fake.errors == []


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for k in (ENV_HOST, ENV_TOKEN, ENV_COOKIE, "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(ENV_SA_TOKEN_PATH, str(tmp_path / "no-such-token"))
    for k, v in FAKE_SECRETS.items():
        monkeypatch.setenv(k, v)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `genpipe ARGS` in-process through cli.main (one-line errors, exit codes)."""
    capsys.readouterr()
    old = sys.argv
    sys.argv = ["genpipe", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    o = capsys.readouterr()
    return code, o.out, o.err


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
    assert images == {"registry.example/genpipe:0.1.0-gpu"}
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
    assert "namespace" in kfp_server.calls("GET", "/recurringruns")[0].query
    assert "projected" not in repr(KfpAuth(token="projected-sa-token"))


def test_schedule_cron_replaces_same_name_and_manage_schedules(kfp_server, capsys):
    url = kfp_server.url
    # Other schedules exist, so listing needs several pages (page size 2).
    for i in range(3):
        kfp_server.recurring[f"rr-other-{i}"] = {
            "recurring_run_id": f"rr-other-{i}",
            "display_name": f"other-{i}",
            "status": "ENABLED",
            "mode": "ENABLE",
        }
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

    # Re-scheduling the same name: the old recurring run is deleted, then a new one created.
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
    assert kfp_server.requests.index(delete) < kfp_server.requests.index(creates[1])
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
    assert kfp_server.requests == []


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


def test_concurrent_upload_of_the_same_content_reuses_the_version(kfp_server, capsys):
    args = ["submit", "vae", "--host", kfp_server.url, "--preset", "tiny"]
    assert run_cli(args, capsys)[0] == 0  # creates the pipeline
    kfp_server.versions.clear()  # as if the version had been deleted meanwhile ...
    kfp_server.race_upload = True  # ... and another client re-uploads it during our submit
    code, out, err = run_cli([*args, "--set", "epochs=1"], capsys)
    assert code == 0, err
    (race,) = kfp_server.calls("POST", "/pipelines/upload_version")[1:]
    (version,) = kfp_server.versions.values()
    assert version["display_name"] == race.query["name"][0]
    runs = kfp_server.calls("POST", "/runs")
    assert (
        runs[-1].json()["pipeline_version_reference"]["pipeline_version_id"]
        == version["pipeline_version_id"]
    )
    assert "unchanged, reused" in out
