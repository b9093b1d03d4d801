"""Multi-worker training for real (two processes on 127.0.0.1) and the TFJob manifests.

The two-worker test runs our Trainer under MultiWorkerMirroredStrategy in two OS processes
that find each other through TF_CONFIG on free ports, on a dataset published to and fetched
from the session's real object store. Manifests are validated with kubernetes-validate: a
TFJob is a CRD, so its PodTemplateSpec is checked against the core schema (as a PodTemplate)
and the TFJob fields structurally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException

from zoo import distributed as zd
from zoo.data import fetch, load_source, publish, split
from zoo.errors import ConfigError, GenpipeError

K8S_VERSION = "1.30.0"
ROOT = Path(__file__).resolve().parents[2]

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
    ports = zd.free_ports(2)
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
            "TF_CONFIG": zd.make_tf_config(workers, i),
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
    raw = zd.make_tf_config(["a:1", "b:2", "c:3"], 2)
    assert json.loads(raw) == {
        "cluster": {"worker": ["a:1", "b:2", "c:3"]},
        "task": {"type": "worker", "index": 2},
    }
    info = zd.cluster_info({"TF_CONFIG": raw})
    assert (info.num_workers, info.task_index, info.is_chief) == (3, 2, False)
    assert zd.cluster_info({"TF_CONFIG": zd.make_tf_config(["a:1", "b:2"], 0)}).is_chief
    assert zd.cluster_info({}) == zd.ClusterInfo(1, "worker", 0)
    assert len(set(zd.free_ports(3))) == 3


@pytest.mark.parametrize(
    ("workers", "index", "needle"),
    [([], 0, "at least one"), (["nohost"], 0, "host:port"), (["a:1"], 1, "out of range")],
)
def test_tf_config_bad_input_names_the_value(workers: list[str], index: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        zd.make_tf_config(workers, index)


def test_bad_tf_config_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TF_CONFIG is not JSON"):
        zd.cluster_info({"TF_CONFIG": "{not json"})


# --- manifests -----------------------------------------------------------------------------------


def _spec(**kw: Any) -> zd.TFJobSpec:
    base = {
        "name": zd.job_name("0123456789abcdef0123456789ABCDEF"),
        "image": "ghcr.io/genpipe/genpipe:0.1.0-gpu",
        "command": zd.worker_command("vae", "s3://b/datasets/x/manifest.json", "r1", "tiny", "{}"),
        "workers": 3,
        "namespace": "team-a",
        "gpus_per_worker": 1,
        "env": {"GENPIPE_LOG": "info"},
        "secret_env": [("genpipe-s3", False), ("genpipe-mlflow", True)],
        "config_map_env": [("genpipe-config", False)],
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Equal", "value": "true", "toleration_seconds": 60},
        ],
    }
    return zd.TFJobSpec(**{**base, **kw})


def _check_tfjob_structure(m: dict[str, Any]) -> None:
    """The TFJob CRD's fields (kubeflow.org/v1), checked by hand: there is no offline schema."""
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "TFJob"
    assert set(m) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(m["spec"]) <= {"runPolicy", "tfReplicaSpecs", "successPolicy", "enableDynamicWorker"}
    assert m["spec"]["runPolicy"]["cleanPodPolicy"] in ("None", "Running", "All")
    assert isinstance(m["spec"]["runPolicy"]["backoffLimit"], int)
    replicas = m["spec"]["tfReplicaSpecs"]
    assert set(replicas) <= {"Chief", "PS", "Worker", "Evaluator"} and replicas
    for r in replicas.values():
        assert set(r) <= {"replicas", "restartPolicy", "template"}
        assert isinstance(r["replicas"], int) and r["replicas"] >= 1
        assert r["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        containers = r["template"]["spec"]["containers"]
        # The operator injects TF_CONFIG into, and reads the port of, the "tensorflow" container.
        tf_c = [c for c in containers if c["name"] == zd.TF_CONTAINER]
        assert len(tf_c) == 1
        assert {"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"} in tf_c[0]["ports"]


def _validate_pod_template(template: dict[str, Any]) -> None:
    pod_template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "worker"},
        "template": template,
    }
    kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def test_tfjob_manifest_validates_and_carries_the_run() -> None:
    spec = _spec()
    m = zd.tfjob_manifest(spec)
    _check_tfjob_structure(m)
    worker = m["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3
    _validate_pod_template(worker["template"])
    c = worker["template"]["spec"]["containers"][0]
    assert c["command"][:4] == ["python", "-m", "zoo.distributed", "worker"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Credentials are references only, never values.
    assert {"secretRef": {"name": "genpipe-s3", "optional": False}} in c["envFrom"]
    assert not any("SECRET" in e["name"] for e in c["env"])
    pod = worker["template"]["spec"]
    assert pod["tolerations"][1]["tolerationSeconds"] == 60
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert m["metadata"]["namespace"] == "team-a" and len(m["metadata"]["name"]) <= 63


def test_cpu_tfjob_manifest_validates_without_gpu_fields() -> None:
    m = zd.tfjob_manifest(
        _spec(gpus_per_worker=0, node_selector={}, tolerations=[], secret_env=[], env={})
    )
    _check_tfjob_structure(m)
    tmpl = m["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    _validate_pod_template(tmpl)
    assert "nvidia.com/gpu" not in tmpl["spec"]["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in tmpl["spec"] and "tolerations" not in tmpl["spec"]


def test_schema_check_catches_a_broken_template() -> None:
    """The validator is not a rubber stamp: a wrong type in the PodTemplateSpec fails."""
    tmpl = zd.tfjob_manifest(_spec())["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    tmpl["spec"]["containers"][0]["ports"][0]["containerPort"] = "2222"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_pod_template(tmpl)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"name": "Bad_Name"}, "DNS-1123"),
        ({"workers": 0}, "workers=0"),
        ({"image": "ghcr.io/genpipe/genpipe"}, "pinned tag"),
        ({"gpus_per_worker": -1}, "gpus_per_worker=-1"),
        ({"command": []}, "command"),
    ],
)
def test_bad_tfjob_spec_names_the_value(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        zd.tfjob_manifest(_spec(**kw))


# --- job state and waiting (a fake Kubernetes API: the only way without a cluster) -------------


def _job(*conds: tuple[str, str, str]) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": t, "status": s, "message": m} for t, s, m in conds]}}


def test_job_state_reads_operator_conditions() -> None:
    assert zd.job_state({}).phase == "Pending"
    assert zd.job_state(_job(("Created", "True", ""))).phase == "Created"
    running = _job(("Created", "False", ""), ("Running", "True", "2 workers"))
    assert zd.job_state(running) == zd.JobState("Running", "2 workers")
    done = _job(("Running", "False", ""), ("Succeeded", "True", "ok"))
    assert zd.job_state(done).done and zd.job_state(done).phase == "Succeeded"
    failed = _job(("Running", "True", ""), ("Failed", "True", "worker-1 OOMKilled"))
    assert zd.job_state(failed) == zd.JobState("Failed", "worker-1 OOMKilled")


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
    state = zd.wait_tfjob("j", "ns", poll_s=0, custom_api=kube, core_api=kube, out=out.append)
    assert state.phase == "Succeeded"
    assert [line for line in out if line.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert any("phase=Running" in line for line in out)


def test_wait_raises_with_the_operators_message_on_failure() -> None:
    kube = FakeKube([_job(("Failed", "True", "worker-1 exited 137"))], ["boom\n"])
    with pytest.raises(GenpipeError, match="worker-1 exited 137"):
        zd.wait_tfjob("j", "ns", poll_s=0, custom_api=kube, core_api=kube, out=lambda s: None)


def test_submit_reuses_an_existing_job_on_retry() -> None:
    kube = FakeKube([_job(("Running", "True", ""))], [""])
    m = zd.tfjob_manifest(_spec())
    assert zd.submit_tfjob(m, custom_api=kube) == m
    assert zd.submit_tfjob(m, custom_api=kube) == _job(("Running", "True", ""))
    assert len(kube.created) == 1
