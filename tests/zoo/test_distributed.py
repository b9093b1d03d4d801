"""Multi-worker training: TF_CONFIG, the TFJob the train task creates, and the worker.

* Two MultiWorkerMirroredStrategy workers on 127.0.0.1 (real OS processes finding each other
  through TF_CONFIG) train on a dataset from the session's real object store.
* The TFJob is rendered from the template a real compiled pipeline carries and validated
  against the upstream TFJob CRD (tests/upstream_contracts.py, ../shared/specs).
* The train component's launcher runs end to end against a stand-in Training Operator that
  validates the TFJob against the CRD, starts its worker pods as local processes (their env
  resolved from the manifest's Secret/ConfigMap references only, TF_CONFIG written like the
  operator does) and reports status conditions and worker 0's log the way the Kubernetes API
  does. The Kubernetes API itself is the one part not exercised (no cluster here).
* Layering: zoo's library and operations modules import neither pipelines nor components, and
  the trainer no longer imports the distributed entry point (no import cycle).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import upstream_contracts
import yaml
from kubernetes.client.exceptions import ApiException

from genpipe.ops import tfjob
from zoo import tfconfig
from zoo.data import fetch, load_source, publish, split
from zoo.errors import ConfigError, GenpipeError

ROOT = Path(__file__).resolve().parents[2]
GPU_PROFILES = ["gke", "eks", "aks", "generic-nvidia"]

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import numpy as np

    from zoo import models
    from zoo.data import LocalDataset
    from zoo.storage import ObjectStore
    from zoo.train import Trainer, load_model

    data_dir, out_dir, ckpt_uri = sys.argv[1:4]
    cfg = models.resolve_config(
        "vae", "tiny",
        {"epochs": 4, "steps_per_epoch": 8, "batch_size": 32, "distribution": "multi_worker"},
    )
    losses = []
    result = Trainer(
        "vae", cfg, LocalDataset.open(data_dir), Path(out_dir) / "work",
        checkpoint_uri=ckpt_uri, store=ObjectStore.from_env(),
        on_epoch=lambda epoch, m: losses.append(m["train_loss"]),
    ).run()
    model, _ = load_model(result.model_dir)
    np.savez(Path(out_dir) / "weights.npz", *[w.numpy() for w in model.weights])
    (Path(out_dir) / "result.json").write_text(
        json.dumps({"losses": losses, "steps": result.steps})
    )
    """
)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory, stack: Any) -> Path:
    """The offline digits, published to the real object store and fetched back."""
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    manifest = publish(split(load_source("digits")), store, source="digits")
    local = fetch(manifest["uri"], store, tmp_path_factory.mktemp("cache"))
    return local.dir


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_and_falling_loss(
    digits_dir: Path, tmp_path: Path, store: Any
) -> None:
    ports = tfconfig.free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    ckpt_uri = store.uri(f"checkpoints/test-mw-{uuid.uuid4().hex[:8]}")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for i in range(2):
        out = tmp_path / f"w{i}"
        out.mkdir()
        env = {
            **os.environ,
            "TF_CONFIG": tfconfig.make_tf_config(workers, i),
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": str(ROOT),
        }
        log = open(out / "log.txt", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(script), str(digits_dir), str(out), ckpt_uri],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
                out,
            )
        )
    try:
        for p, _, _ in procs:
            p.wait(timeout=300)
    finally:
        for p, log, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for i, (p, _, out) in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{(out / 'log.txt').read_text()[-4000:]}"

    results = [json.loads((out / "result.json").read_text()) for _, _, out in procs]
    weights = [np.load(out / "weights.npz") for _, _, out in procs]
    # All-reduced gradients from identical (broadcast) initial values: the same model.
    assert len(weights[0].files) == len(weights[1].files) > 0
    for k in weights[0].files:
        np.testing.assert_allclose(weights[0][k], weights[1][k], rtol=1e-5, atol=1e-6)
    # The loss is the all-reduced global loss: both workers see the same numbers.
    np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=1e-5)
    losses = results[0]["losses"]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert results[0]["steps"] == results[1]["steps"] == 32
    # Only the chief (worker 0) publishes checkpoints.
    latest = store.get_json(f"{ckpt_uri}/latest.json")
    assert latest["step"] == 32 and latest["epoch"] == 4


# --- TF_CONFIG -----------------------------------------------------------------------------------


def test_tf_config_round_trip_and_chief() -> None:
    raw = tfconfig.make_tf_config(["a:1", "b:2", "c:3"], 2)
    assert json.loads(raw) == {
        "cluster": {"worker": ["a:1", "b:2", "c:3"]},
        "task": {"type": "worker", "index": 2},
    }
    info = tfconfig.cluster_info({"TF_CONFIG": raw})
    assert (info.num_workers, info.task_index, info.is_chief) == (3, 2, False)
    assert tfconfig.cluster_info({"TF_CONFIG": tfconfig.make_tf_config(["a:1", "b:2"], 0)}).is_chief
    assert tfconfig.cluster_info({}) == tfconfig.ClusterInfo(1, "worker", 0)
    assert len(set(tfconfig.free_ports(3))) == 3


@pytest.mark.parametrize(
    ("workers", "index", "needle"),
    [([], 0, "at least one"), (["nohost"], 0, "host:port"), (["a:1"], 1, "out of range")],
)
def test_tf_config_bad_input_names_the_value(workers: list[str], index: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        tfconfig.make_tf_config(workers, index)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("{not json", "TF_CONFIG is not JSON"),
        ("[1]", "not a JSON object"),
        ('{"task": {"index": "x"}}', "task.index 'x'"),
    ],
)
def test_bad_tf_config_env_is_a_config_error(raw: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        tfconfig.cluster_info({"TF_CONFIG": raw})


# --- the TFJob a compiled pipeline creates -----------------------------------------------------


def compiled_tfjob(tmp_path: Path, profile: Any, workers: int | None = None) -> tuple[dict, dict]:
    """(template from the compiled train task's constant input `tfjob`, the pipeline spec)."""
    from kfp import compiler

    from pipelines.factory import build_pipeline

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline("vae", profile, workers=workers), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    # The steps sit in the exit handler's and conditions' groups (pipelines/factory.py).
    train = next(
        c["dag"]["tasks"]["train"]
        for c in spec["components"].values()
        if "train" in c.get("dag", {}).get("tasks", {})
    )
    constant = train["inputs"]["parameters"]["tfjob"]
    return tfjob.parse_template(constant["runtimeValue"]["constant"]), spec


def rendered(template: dict[str, Any], run_id: str = "0123456789abcdef0123456789ABCDEF") -> dict:
    return tfjob.render(
        template,
        mlflow_run_id=run_id,
        namespace="team-a",
        command=tfjob.worker_command(
            "vae", "s3://b/datasets/x/manifest.json", run_id, "tiny", "{}"
        ),
    )


@pytest.mark.parametrize("profile", [*GPU_PROFILES, "cpu"])
def test_rendered_tfjob_is_valid_against_the_upstream_crd(tmp_path: Path, profile: str) -> None:
    template, spec = compiled_tfjob(tmp_path, profile, workers=3)
    job = rendered(template)
    upstream_contracts.assert_valid(job)
    assert job["metadata"]["name"] == "genpipe-train-0123456789abcdef0123456789abcdef"
    assert job["metadata"]["namespace"] == "team-a"
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    c = worker["template"]["spec"]["containers"][0]
    assert c["name"] == "tensorflow" and c["command"][:4] == [
        "python",
        "-m",
        "zoo.distributed",
        "worker",
    ]
    # The workers' image is the launcher's own, compiled in (no GENPIPE_IMAGE to forget).
    assert c["image"] == spec["deploymentSpec"]["executors"]["exec-train"]["container"]["image"]


def test_crd_check_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    """The old manifest's envFrom + cleanPodPolicy None passed; typos and wrong types fail."""
    job = rendered(compiled_tfjob(tmp_path, "gke", workers=2)[0])
    bad = json.loads(json.dumps(job))
    bad["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ] = "2222"
    assert upstream_contracts.crd_errors(bad)
    bad = json.loads(json.dumps(job))
    bad["spec"]["runPolicy"]["ttlSecondAfterFinished"] = 60  # typo: an unknown field
    assert upstream_contracts.crd_errors(bad)


def test_render_keeps_the_template_and_names_bad_input(tmp_path: Path) -> None:
    template, _ = compiled_tfjob(tmp_path, "aks", workers=2)
    before = json.dumps(template, sort_keys=True)
    rendered(template)
    assert json.dumps(template, sort_keys=True) == before  # a retry renders the same job
    with pytest.raises(ConfigError, match="namespace 'Team_A'"):
        tfjob.render(template, mlflow_run_id="r1", namespace="Team_A", command=["x"])
    with pytest.raises(ConfigError, match="train input tfjob is not JSON"):
        tfjob.parse_template("{nope")
    with pytest.raises(ConfigError, match="exactly one Worker"):
        tfjob.parse_template(json.dumps({**template, "spec": {"tfReplicaSpecs": {}}}))
    assert tfjob.wait_seconds(rendered(template)) == 172800 + tfjob.DEADLINE_GRACE_S


def test_namespace_comes_from_the_downward_api(tmp_path: Path) -> None:
    assert tfjob.current_namespace({tfjob.ENV_POD_NAMESPACE: "team-b"}) == "team-b"


# --- job state and waiting (a stand-in Kubernetes API: there is no cluster here) ---------------


def _job(*conds: tuple[str, str, str]) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conds]}}


def test_job_state_reads_operator_conditions() -> None:
    assert tfjob.job_state({}).phase == "Pending"
    assert tfjob.job_state(_job(("Created", "True", ""))).phase == "Created"
    running = _job(("Created", "False", ""), ("Running", "True", "2 workers"))
    assert tfjob.job_state(running) == tfjob.JobState("Running", "2 workers")
    done = _job(("Running", "False", ""), ("Succeeded", "True", "ok"))
    assert tfjob.job_state(done).done and tfjob.job_state(done).phase == "Succeeded"
    failed = _job(("Running", "True", ""), ("Failed", "True", "worker-1 OOMKilled"))
    assert tfjob.job_state(failed) == tfjob.JobState("Failed", "worker-1 OOMKilled")


class FakeKube:
    """CustomObjectsApi + CoreV1Api stand-in replaying a job's status and worker-0 log."""

    def __init__(self, states: list[dict[str, Any]], logs: list[str]) -> None:
        self.states, self.logs, self.created = states, logs, []
        self.polls = 0

    def create_namespaced_custom_object(self, group, version, ns, plural, body):  # noqa: ANN001
        if self.created:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((group, version, ns, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):  # noqa: ANN001
        assert (group, version, plural) == ("kubeflow.org", "v1", "tfjobs")
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return state

    def list_namespaced_pod(self, ns, label_selector):  # noqa: ANN001
        assert "training.kubeflow.org/replica-index=0" in label_selector
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="w-0"))])

    def read_namespaced_pod_log(self, name, ns, container):  # noqa: ANN001
        assert container == "tensorflow"
        return self.logs[min(self.polls - 1, len(self.logs) - 1)]


def test_wait_streams_log_once_and_returns_on_success() -> None:
    kube = FakeKube(
        [
            _job(("Created", "True", "")),
            _job(("Running", "True", "")),
            _job(("Succeeded", "True", "")),
        ],
        ["", "epoch 1\n", "epoch 1\nepoch 2\n"],
    )
    out: list[str] = []
    state = tfjob.wait_tfjob("j", "ns", poll_s=0, custom_api=kube, core_api=kube, out=out.append)
    assert state.phase == "Succeeded"
    assert [line for line in out if line.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert any("phase=Running" in line for line in out)


def test_wait_raises_with_the_operators_message_on_failure() -> None:
    kube = FakeKube([_job(("Failed", "True", "worker-1 exited 137"))], ["boom\n"])
    with pytest.raises(GenpipeError, match="worker-1 exited 137"):
        tfjob.wait_tfjob("j", "ns", poll_s=0, custom_api=kube, core_api=kube, out=lambda s: None)


def test_submit_reuses_an_existing_job_on_retry(tmp_path: Path) -> None:
    kube = FakeKube([_job(("Running", "True", ""))], [""])
    m = rendered(compiled_tfjob(tmp_path, "gke", workers=2)[0])
    assert tfjob.submit_tfjob(m, custom_api=kube) == m
    assert tfjob.submit_tfjob(m, custom_api=kube) == _job(("Running", "True", ""))
    assert len(kube.created) == 1


class JobStore:
    """The custom-objects API for one namespace: create/get/delete keyed by name, like the
    API server (409 on a taken name, 404 on a missing one)."""

    def __init__(self, existing: dict[str, dict[str, Any]]) -> None:
        self.jobs = dict(existing)
        self.calls: list[str] = []

    def create_namespaced_custom_object(self, group, version, ns, plural, body):  # noqa: ANN001
        self.calls.append("create")
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = body
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):  # noqa: ANN001
        self.calls.append("get")
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[name]

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, body):  # noqa: ANN001
        self.calls.append("delete")
        assert body == {"propagationPolicy": "Foreground"}  # its pods go with it
        del self.jobs[name]


def test_a_retry_replaces_a_failed_job_and_waits_for_a_live_one(tmp_path: Path) -> None:
    """A KFP retry of the train task must train again: the old code re-attached to the
    failed job of the same name and failed at once, every retry."""
    job = rendered(compiled_tfjob(tmp_path, "gke", workers=2)[0])
    name = job["metadata"]["name"]
    failed = JobStore({name: _job(("Failed", "True", "deadline exceeded"))})
    assert tfjob.submit_tfjob(job, custom_api=failed, poll_s=0) == job
    assert failed.calls == ["create", "get", "delete", "get", "create"]
    running = JobStore({name: _job(("Running", "True", ""))})
    assert tfjob.submit_tfjob(job, custom_api=running, poll_s=0) == running.jobs[name]
    assert running.calls == ["create", "get"]


def test_launch_creates_the_rendered_job_in_the_pods_namespace(tmp_path: Path) -> None:
    template, _ = compiled_tfjob(tmp_path, "aks", workers=2)
    kube = FakeKube([_job(("Succeeded", "True", ""))], [""])
    job = tfjob.launch(
        template,
        "vae",
        "s3://b/m.json",
        "run1",
        "tiny",
        "{}",
        namespace="team-a",
        custom_api=kube,
        core_api=kube,
        poll_s=0,
        out=lambda s: None,
    )
    ((_, _, ns, plural, body),) = kube.created
    assert (ns, plural, body) == ("team-a", "tfjobs", job)
    upstream_contracts.assert_valid(body)


# --- the launcher end to end, against a stand-in Training Operator ------------------------------


class LocalTrainingOperator:
    """Runs a TFJob's worker pods as local processes, as the Training Operator runs pods.

    On create it validates the TFJob against the upstream CRD, then starts `replicas` copies
    of the `tensorflow` container's command with an environment built ONLY from the
    container's own env entries (values, and secretKeyRef/configMapKeyRef resolved from the
    given cluster objects, honouring `optional`), plus TF_CONFIG as the operator writes it
    (every worker on 127.0.0.1 here). Status conditions and worker 0's log come back the way
    the Kubernetes API returns them.
    """

    def __init__(
        self,
        secrets: dict[str, dict[str, str]],
        config_maps: dict[str, dict[str, str]],
        workdir: Path,
    ) -> None:
        self.objects = {"secretKeyRef": secrets, "configMapKeyRef": config_maps}
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.created: list[dict[str, Any]] = []

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "HOME": str(self.workdir),
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TMPDIR": str(self.workdir),
        }
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ((kind, ref),) = e["valueFrom"].items()
            value = self.objects[kind].get(ref["name"], {}).get(ref["key"])
            if value is None:
                assert ref.get("optional"), f"pod would not start: {ref} is missing"
                continue
            env[e["name"]] = value
        return env

    def create_namespaced_custom_object(self, group, version, ns, plural, body):  # noqa: ANN001
        upstream_contracts.assert_valid(body)
        self.created.append(body)
        worker = body["spec"]["tfReplicaSpecs"]["Worker"]
        (container,) = worker["template"]["spec"]["containers"]
        hosts = [f"127.0.0.1:{p}" for p in tfconfig.free_ports(worker["replicas"])]
        command = [sys.executable, *container["command"][1:]]  # the image's `python`
        for i in range(worker["replicas"]):
            log = self.workdir / f"worker-{i}.log"
            self.logs.append(log)
            env = {**self._env(container), "TF_CONFIG": tfconfig.make_tf_config(hosts, i)}
            with open(log, "w") as f:
                self.procs.append(
                    subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)
                )
        return body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):  # noqa: ANN001
        codes = [p.poll() for p in self.procs]
        if any(c not in (None, 0) for c in codes):
            bad = next(i for i, c in enumerate(codes) if c not in (None, 0))
            self.stop()
            return _job(("Failed", "True", f"worker-{bad} exited {codes[bad]}"))
        if all(c == 0 for c in codes):
            return _job(("Running", "False", ""), ("Succeeded", "True", "TFJob succeeded"))
        return _job(("Running", "True", ""))

    def list_namespaced_pod(self, ns, label_selector):  # noqa: ANN001
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name="worker-0"))])

    def read_namespaced_pod_log(self, name, ns, container):  # noqa: ANN001
        return self.logs[0].read_text()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_launcher_trains_in_a_tfjob_and_logs_the_chiefs_model(stack: Any, tmp_path: Path) -> None:
    from components import ingest
    from components.train import _run_tfjob
    from pipelines.platform import CONFIG_MAP, SECRET_MLFLOW, SECRET_S3
    from zoo import tracking

    env = dict(stack.env)
    secret_keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    mlflow_keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    operator = LocalTrainingOperator(
        secrets={
            SECRET_S3: {k: env[k] for k in secret_keys},
            SECRET_MLFLOW: {k: env[k] for k in mlflow_keys if k in env},
        },
        config_maps={
            CONFIG_MAP: {k: v for k, v in env.items() if k not in secret_keys + mlflow_keys}
        },
        workdir=tmp_path,
    )
    ing = ingest.run("digits", "vae", f"test-tfjob-{uuid.uuid4().hex[:6]}", "pipeline-run-1")
    template, _ = compiled_tfjob(tmp_path, "cpu", workers=2)
    out: list[str] = []
    try:
        result = _run_tfjob(
            json.dumps(template),
            "vae",
            ing["manifest_uri"],
            ing["mlflow_run_id"],
            str(tmp_path / "model"),
            "tiny",
            {"epochs": 2, "steps_per_epoch": 4, "batch_size": 32},
            namespace="team-a",
            custom_api=operator,
            core_api=operator,
            poll_s=1,
            out=out.append,
        )
    finally:
        operator.stop()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in operator.logs)
    assert all(p.returncode == 0 for p in operator.procs), logs
    (job,) = operator.created
    assert job["metadata"]["namespace"] == "team-a"
    # Workers were told multi_worker explicitly, with the run's overrides.
    command = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
        "command"
    ]
    overrides = json.loads(command[command.index("--overrides") + 1])
    assert overrides == {
        "epochs": 2,
        "steps_per_epoch": 4,
        "batch_size": 32,
        "distribution": "multi_worker",
    }
    assert any("phase=Succeeded" in line for line in out)
    # The chief logged to the run, and the launcher logged the model it uploaded.
    run = tracking.client().get_run(ing["mlflow_run_id"])
    assert run.data.metrics["train_wall_s"] > 0
    assert result["model_uri"] and (tmp_path / "model" / "config.json").is_file()
    assert "train_samples_per_s_overall" in run.data.metrics


def test_launcher_refuses_a_single_device_distribution(tmp_path: Path) -> None:
    from components.train import _run_tfjob

    template, _ = compiled_tfjob(tmp_path, "gke", workers=2)
    with pytest.raises(ConfigError, match="distribution='single'.*2 TFJob workers"):
        _run_tfjob(
            json.dumps(template),
            "vae",
            "s3://b/m.json",
            "r1",
            str(tmp_path / "m"),
            "tiny",
            {"distribution": "single"},
        )


# --- layering -----------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_trainer_does_not_import_the_worker_entry_point() -> None:
    """Layers in general: tests/test_layers.py. Here: the TFJob plumbing stays out of the trainer."""
    # The trainer needs only TF_CONFIG parsing, not the worker entry point that imports it.
    train_imports = _imports(ROOT / "zoo" / "train.py")
    assert not any(m.startswith("zoo.distributed") for m in train_imports), train_imports
    assert not any(
        m.startswith(("zoo.train", "zoo.distributed", "genpipe.ops.tfjob"))
        for m in _imports(ROOT / "zoo" / "tfconfig.py")
    )


def test_worker_entry_point_runs_as_a_module() -> None:
    """`python -m zoo.distributed worker` is what every TFJob pod runs."""
    r = subprocess.run(
        [sys.executable, "-m", "zoo.distributed", "worker", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--manifest-uri" in r.stdout and "--mlflow-run-id" in r.stdout
