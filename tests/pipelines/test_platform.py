"""Platform profiles compiled into real KFP pipeline YAML (pipeline spec + platform spec).

Every assertion reads the compiled file, i.e. what a KFP backend would execute, rather than
the SDK objects that produced it.
"""

# No `from __future__ import annotations`: kfp reads the component signatures at runtime.
import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, dsl

import zoo
from pipelines.platform import (
    CONFIG_MAP,
    ROLES,
    SECRET_MLFLOW,
    SECRET_S3,
    Profile,
    RoleResources,
    apply_platform,
    load_profile,
    profile_names,
)
from pipelines.profile import TrainDefaults
from zoo.errors import ConfigError

GPU_PROFILES = ["gke", "eks", "aks", "generic-nvidia"]

# The scheduling conventions verified against vendor docs (see comments in profiles.yaml).
EXPECTED = {
    "gke": (
        {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ),
    "eks": (
        {"karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia"},
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ),
    "aks": (
        {"accelerator": "nvidia"},
        [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    ),
    "generic-nvidia": (
        {"nvidia.com/gpu.present": "true"},
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ),
}

FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-fake-should-not-leak",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-should-not-leak",
    "MLFLOW_TRACKING_USERNAME": "mlflow-user-should-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-pw-should-not-leak",
}
# Endpoints are not secret, but they belong to the cluster, not to the compiled pipeline.
FAKE_ENDPOINTS = {
    "GENPIPE_S3_ENDPOINT": "http://minio.internal:9000",
    "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
}


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real-looking credentials in the environment: none may end up in compiled YAML."""
    for key, value in {**FAKE_SECRETS, **FAKE_ENDPOINTS}.items():
        monkeypatch.setenv(key, value)


# One trivial function per role; the bodies never run, only the compiled specs matter.
def ingest() -> str:
    return "data"


def train(data: str) -> str:
    return data


def evaluate(model: str) -> float:
    return 0.0


def register(model: str, score: float) -> str:
    return model


def finalize(status: dsl.PipelineTaskFinalStatus) -> str:
    return status.state


def compile_with(profile: Profile, tmp_path: Path, image: str | None = None) -> dict[str, Any]:
    """Compile a 5-role pipeline (finalize: its exit handler) on `profile`; returns spec,
    executors, platform and raw text.

    Components get `profile.image` as base image, as pipelines/factory.py does.
    """
    ops = {
        f.__name__: dsl.component(f, base_image=profile.image, install_kfp_package=False)
        for f in (ingest, train, evaluate, register, finalize)
    }

    @dsl.pipeline(name="platform-test")
    def pipeline() -> None:
        f = apply_platform(ops["finalize"](), profile, "finalize", image=image)
        with dsl.ExitHandler(f):
            i = apply_platform(ops["ingest"](), profile, "ingest", image=image)
            t = apply_platform(ops["train"](data=i.output), profile, "train", image=image)
            e = apply_platform(ops["evaluate"](model=t.output), profile, "evaluate", image=image)
            r = ops["register"](model=t.output, score=e.output)
            apply_platform(r, profile, "register", image=image)

    path = tmp_path / f"{profile.name}.yaml"
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 2, "expected pipeline spec + platform spec documents"
    spec, platform = docs
    return {
        "text": text,
        "executors": spec["deploymentSpec"]["executors"],
        "platform": platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"],
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every built-in profile compiled once (secrets are set before compiling)."""
    tmp = tmp_path_factory.mktemp("compiled")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**FAKE_SECRETS, **FAKE_ENDPOINTS}.items():
            mp.setenv(key, value)
        return {name: compile_with(load_profile(name), tmp) for name in profile_names()}


def test_profile_names_are_the_five_documented_profiles() -> None:
    assert profile_names() == ["cpu", "gke", "eks", "aks", "generic-nvidia"]


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profiles_carry_the_verified_scheduling_conventions(name: str) -> None:
    p = load_profile(name)
    selector, tolerations = EXPECTED[name]
    assert p.node_selector == selector
    assert p.tolerations == tolerations
    # The open-source KFP driver copies the type verbatim into resources.limits.
    assert p.accelerator_type == "nvidia.com/gpu"
    assert p.accelerator_limit == 1
    assert p.gpu_roles == ("train", "evaluate")


@pytest.mark.parametrize("name", GPU_PROFILES)
@pytest.mark.parametrize("role", ["train", "evaluate"])
def test_gpu_roles_get_accelerator_selector_and_tolerations(
    compiled: dict[str, dict[str, Any]], name: str, role: str
) -> None:
    c = compiled[name]
    accel = c["executors"][f"exec-{role}"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/gpu"
    assert accel["resourceCount"] == "1"
    k8s = c["platform"][f"exec-{role}"]
    selector, tolerations = EXPECTED[name]
    assert k8s["nodeSelector"]["labels"] == selector
    assert k8s["tolerations"] == tolerations


@pytest.mark.parametrize("name", profile_names())
@pytest.mark.parametrize("role", ROLES)
def test_every_role_gets_secret_and_config_map_references(
    compiled: dict[str, dict[str, Any]], name: str, role: str
) -> None:
    k8s = compiled[name]["platform"][f"exec-{role}"]
    secrets = {s["secretName"]: s for s in k8s["secretAsEnv"]}
    assert set(secrets) == {SECRET_S3, SECRET_MLFLOW}
    s3_keys = {m["secretKey"]: m["envVar"] for m in secrets[SECRET_S3]["keyToEnv"]}
    assert s3_keys == {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    assert secrets[SECRET_S3]["optional"] is False
    mlflow_keys = {m["secretKey"] for m in secrets[SECRET_MLFLOW]["keyToEnv"]}
    assert mlflow_keys == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    # Clusters whose MLflow has no auth have no such Secret; the pod must still start.
    assert secrets[SECRET_MLFLOW]["optional"] is True

    config_maps = k8s["configMapAsEnv"]
    assert {c["configMapName"] for c in config_maps} == {CONFIG_MAP}
    required = {m["envVar"] for c in config_maps if not c["optional"] for m in c["keyToEnv"]}
    optional = {m["envVar"] for c in config_maps if c["optional"] for m in c["keyToEnv"]}
    assert required == {"GENPIPE_S3_ENDPOINT", "MLFLOW_TRACKING_URI"}
    assert optional == {"GENPIPE_BUCKET"}
    assert k8s["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("name", profile_names())
@pytest.mark.parametrize("role", ["ingest", "register"])
def test_cpu_roles_never_get_the_gpu(
    compiled: dict[str, dict[str, Any]], name: str, role: str
) -> None:
    resources = compiled[name]["executors"][f"exec-{role}"]["container"]["resources"]
    assert "accelerator" not in resources
    k8s = compiled[name]["platform"][f"exec-{role}"]
    assert "nodeSelector" not in k8s
    assert "tolerations" not in k8s


def test_cpu_profile_has_no_accelerator_anywhere(compiled: dict[str, dict[str, Any]]) -> None:
    c = compiled["cpu"]
    for role in ROLES:
        assert "accelerator" not in c["executors"][f"exec-{role}"]["container"]["resources"]
        assert "nodeSelector" not in c["platform"][f"exec-{role}"]
        assert "tolerations" not in c["platform"][f"exec-{role}"]
    assert "nvidia.com/gpu" not in c["text"]


@pytest.mark.parametrize("name", profile_names())
def test_resources_and_pinned_image_per_role(
    compiled: dict[str, dict[str, Any]], name: str
) -> None:
    profile = load_profile(name)
    flavour = "cpu" if name == "cpu" else "gpu"
    for role in ROLES:
        container = compiled[name]["executors"][f"exec-{role}"]["container"]
        assert container["image"] == f"ghcr.io/genpipe/genpipe:{zoo.__version__}-{flavour}"
        want = profile.resources[role]
        res = container["resources"]
        assert res["resourceCpuRequest"] == want.cpu_request
        assert res["resourceCpuLimit"] == want.cpu_limit
        assert res["resourceMemoryRequest"] == want.memory_request
        assert res["resourceMemoryLimit"] == want.memory_limit
    assert ":latest" not in compiled[name]["text"]


def test_gpu_training_is_sized_for_a_4_vcpu_16gb_gpu_node() -> None:
    # g5.xlarge, g2-standard-4, n1-standard-4+T4: requests above this never schedule.
    train = load_profile("gke").resources["train"]
    assert float(train.cpu_request) <= 3.5
    assert int(train.memory_request.removesuffix("Gi")) <= 12


@pytest.mark.parametrize("name", profile_names())
def test_no_secret_value_reaches_the_compiled_yaml(
    compiled: dict[str, dict[str, Any]], name: str
) -> None:
    text = compiled[name]["text"]
    for value in FAKE_SECRETS.values():
        assert value not in text
    # Endpoints travel by ConfigMap reference too, not as literal values.
    assert "minio.internal" not in text and "mlflow.internal" not in text


def test_image_override(tmp_path: Path) -> None:
    c = compile_with(load_profile("gke"), tmp_path, image="registry.example/genpipe:dev-1")
    for role in ROLES:
        assert (
            c["executors"][f"exec-{role}"]["container"]["image"] == "registry.example/genpipe:dev-1"
        )


def test_unknown_profile_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_profile("gcp")
    for name in profile_names():
        assert name in str(err.value)


def test_unknown_role_is_a_config_error() -> None:
    task_factory = dsl.component(ingest, base_image="python:3.11-slim")
    # kfp builds the graph when @dsl.pipeline decorates, so that is where the error surfaces.
    with pytest.raises(ConfigError, match="serve.*ingest, train, evaluate, register"):

        @dsl.pipeline(name="bad-role")
        def pipeline() -> None:
            apply_platform(task_factory(), load_profile("cpu"), "serve")


def test_loaded_profiles_are_independent_copies() -> None:
    a = load_profile("gke")
    a.node_selector["x"] = "y"
    a.resources["train"].cpu_request = "1"
    b = load_profile("gke")
    assert "x" not in b.node_selector
    assert b.resources["train"].cpu_request == "3"


# --- user profile files -------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_profile_file_full_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "onprem.yaml",
        """
description: On-prem A100 nodes
image: registry.local/genpipe:{version}-gpu
accelerator_type: nvidia.com/gpu
accelerator_limit: 2
node_selector: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-40GB, gpu: true}
tolerations:
  - {key: dedicated, operator: Equal, value: ml, effect: NoSchedule}
gpu_roles: [train]
resources:
  train: {cpu_request: 8, memory_limit: 64Gi, memory_request: 32Gi, cpu_limit: "16"}
image_pull_policy: Always
""",
    )
    p = load_profile(str(path))
    assert p.name == "onprem"
    assert p.image == f"registry.local/genpipe:{zoo.__version__}-gpu"
    assert p.accelerator_limit == 2
    # An unquoted YAML `true` becomes the label string "true".
    assert p.node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "gpu": "true"}
    assert p.gpu_roles == ("train",)
    assert p.resources["train"] == RoleResources("8", "16", "32Gi", "64Gi")
    # Roles the file leaves out keep the packaged defaults.
    assert p.resources["ingest"] == load_profile("cpu").resources["ingest"]

    c = compile_with(p, tmp_path)
    assert (
        c["executors"]["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"]
        == "2"
    )
    assert "accelerator" not in c["executors"]["exec-evaluate"]["container"]["resources"]
    assert c["platform"]["exec-train"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]
    assert c["platform"]["exec-train"]["imagePullPolicy"] == "Always"


def test_user_profile_extends_a_builtin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "eks-mng.yml",
        "name: eks-g5\nextends: eks\nnode_selector: {node.kubernetes.io/instance-type: g5.xlarge}\n",
    )
    p = load_profile(str(path))
    eks = load_profile("eks")
    assert p.name == "eks-g5"
    assert p.node_selector == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert (p.image, p.tolerations, p.resources) == (eks.image, eks.tolerations, eks.resources)


def test_user_profile_in_profiles_yaml_layout(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mine.yaml",
        "profiles:\n  lab:\n    image: ghcr.io/genpipe/genpipe:{version}-cpu\n",
    )
    p = load_profile(str(path))
    assert p.name == "lab" and p.accelerator_type is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("image: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("image: ghcr.io/genpipe/genpipe:{version}-cpu\nnode_selecter: {a: b}\n", "node_selecter"),
        ("description: no image\n", "image"),
        ("image: ghcr.io/genpipe/genpipe:latest\n", "image"),
        ("image: ghcr.io/genpipe/genpipe\n", "image"),
        (
            "extends: gke\ntolerations: [{key: nvidia.com/gpu, operator: Maybe}]\n",
            "tolerations[0].operator",
        ),
        (
            "extends: gke\ntolerations: [{key: a, operator: Exists, value: b}]\n",
            "tolerations[0].value",
        ),
        ("extends: gke\naccelerator_limit: 0\n", "accelerator_limit"),
        ("extends: cpu\naccelerator_limit: 1\n", "accelerator_limit"),
        ("extends: cpu\ngpu_roles: [train, serve]\n", "gpu_roles"),
        ("extends: cpu\nresources: {train: {cpu_request: two}}\n", "resources.train.cpu_request"),
        (
            "extends: cpu\nresources: {train: {memory_limit: 1.5Gi}}\n",
            "resources.train.memory_limit",
        ),
        ("extends: cpu\nresources: {train: {cpu_request: '8'}}\n", "resources.train.cpu_request"),
        ("extends: cpu\nresources: {serve: {cpu_request: '1'}}\n", "resources.serve"),
        ("extends: cpu\nimage_pull_policy: Sometimes\n", "image_pull_policy"),
        ("extends: azure\n", "extends"),
        ("extends: cpu\ntrain_defaults: {precision: half}\n", "train_defaults.precision"),
        ("extends: cpu\ntrain_defaults: {steps_per_call: 0}\n", "train_defaults.steps_per_call"),
        ("extends: cpu\ntrain_defaults: {steps_per_call: '4'}\n", "train_defaults.steps_per_call"),
        ("extends: cpu\ntrain_defaults: {jit_compile: 1}\n", "train_defaults.jit_compile"),
        ("extends: cpu\ntrain_defaults: {epochs: 3}\n", "train_defaults.epochs"),
        ("extends: cpu\ntrain_defaults: [mixed_float16]\n", "train_defaults"),
        ("extends: gke\nworkers: 0\n", "workers"),
        ("extends: gke\nworkers: two\n", "workers"),
        ("extends: gke\nworkers: true\n", "workers"),
        ("extends: gke\ntimeouts: {train: 0}\n", "timeouts.train"),
        ("extends: gke\ntimeouts: {train: 1h}\n", "timeouts.train"),
        ("extends: gke\ntimeouts: {serve: 60}\n", "timeouts.serve"),
        ("extends: gke\ntfjob_ttl_seconds: -1\n", "tfjob_ttl_seconds"),
        ("extends: gke\ncpu_image: ghcr.io/genpipe/genpipe:latest\n", "cpu_image"),
        ("extends: gke\nresources: {launcher: {cpu_request: lots}}\n", "resources.launcher"),
        ("extends: gke\nsecurity_context: maybe\n", "security_context"),
        # null for one role is not "inherit" (only a whole `resources:` left empty is)
        ("extends: gke\nresources: {train: null}\n", "resources.train"),
        ("extends: gke\ngpu_roles: train\n", "gpu_roles"),
        ("extends: gke\ntolerations: [{key: a, tolerationSeconds: 5}]\n", "tolerations[0]"),
        ("extends: gke\nnode_selector: {a: 1.5}\n", "node_selector.a"),
        ("profiles:\n  lab:\n    image: reg.example/x:1\n    workers: 0\n", "profiles.lab.workers"),
    ],
)
def test_malformed_user_profile_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert str(path) in message
    assert key in message
    assert "\n" not in message


def test_missing_user_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_profiles_built_in_code_are_validated() -> None:
    base = load_profile("cpu")
    with pytest.raises(ConfigError, match="latest"):
        dataclasses.replace(base, image="ghcr.io/genpipe/genpipe:latest")
    with pytest.raises(ConfigError, match="accelerator_limit"):
        dataclasses.replace(base, accelerator_type="nvidia.com/gpu", accelerator_limit=0)
    p = Profile(name="code", description="", image="ghcr.io/genpipe/genpipe:{version}-cpu")
    assert p.image.endswith(f":{zoo.__version__}-cpu")
    assert p.resources == base.resources
    # Types too, not only values: what a builder passes is what kfp gets.
    with pytest.raises(ConfigError, match=r"profile 'cpu': workers=True is not an integer"):
        dataclasses.replace(base, workers=True)
    with pytest.raises(ConfigError, match=r"gpu_roles\[1\]='serve' is not one of ingest, train"):
        dataclasses.replace(base, gpu_roles=("train", "serve"))


def test_train_defaults_are_train_config_fields_of_the_same_type() -> None:
    """A profile's train_defaults are TrainConfig settings: same names, same types, every
    choice one the trainer accepts; every built-in profile's defaults make a valid config."""
    from zoo.config import PRECISIONS, field_types, from_dict
    from zoo.models.base import TrainConfig

    train = field_types(TrainConfig)
    for key, tp in typing.get_type_hints(TrainDefaults).items():
        if typing.get_origin(tp) is typing.Literal:
            assert train[key] is str and typing.get_args(tp) == PRECISIONS
            for choice in typing.get_args(tp):
                assert from_dict(TrainConfig, {key: choice}, strict=True)
        else:
            assert tp is train[key]
    for name in profile_names():
        from_dict(TrainConfig, dict(load_profile(name).train_defaults), name, strict=True)


# --- the real pipeline ------------------------------------------------------------------------


def pipeline_task(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Task `name` of a compiled pipeline, in whichever DAG it sits (the factory's steps sit in
    the exit handler's group, not at the root)."""
    for dag in [spec["root"], *spec["components"].values()]:
        if name in dag.get("dag", {}).get("tasks", {}):
            return dag["dag"]["tasks"][name]
    raise KeyError(name)


def compile_factory(tmp_path: Path, **kwargs: Any) -> tuple[str, dict, dict]:
    from pipelines import factory

    path = tmp_path / "vae.yaml"
    compiler.Compiler().compile(
        pipeline_func=factory.build_pipeline("vae", **kwargs), package_path=str(path)
    )
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return text, spec["deploymentSpec"]["executors"], k8s


def test_real_vae_pipeline_on_gke(tmp_path: Path) -> None:
    text, executors, k8s = compile_factory(tmp_path, profile="gke")
    gke = load_profile("gke")
    selector, tolerations = EXPECTED["gke"]
    for role in ROLES:
        names = [n for n in executors if role in n]
        assert names, f"no {role} executor in {sorted(executors)}"
        for n in names:
            container = executors[n]["container"]
            # GPU image only where a GPU is used; ingest and register on the CPU image.
            assert container["image"] == (
                gke.image if role in ("train", "evaluate") else gke.image.replace("-gpu", "-cpu")
            )
            assert container["resources"]["resourceMemoryLimit"] == gke.resources[role].memory_limit
            assert {s["secretName"] for s in k8s[n]["secretAsEnv"]} == {SECRET_S3, SECRET_MLFLOW}
            assert {c["configMapName"] for c in k8s[n]["configMapAsEnv"]} == {CONFIG_MAP}
            if role in ("train", "evaluate"):
                assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
                assert k8s[n]["nodeSelector"]["labels"] == selector
                assert k8s[n]["tolerations"] == tolerations
            else:
                assert "accelerator" not in container["resources"]
                assert "nodeSelector" not in k8s[n]
    for value in FAKE_SECRETS.values():
        assert value not in text


def test_real_pipeline_image_override_survives_apply_platform(tmp_path: Path) -> None:
    _, executors, _ = compile_factory(
        tmp_path, profile="eks", image="registry.example/genpipe:dev-1"
    )
    assert {e["container"]["image"] for e in executors.values()} == {
        "registry.example/genpipe:dev-1"
    }


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("cpu", {}), ("gke", {"precision": "mixed_float16", "steps_per_call": 10})],
)
def test_profile_train_defaults_are_compiled_into_the_ingest_task(
    tmp_path: Path, profile: str, expected: dict
) -> None:
    """GPU profiles train in mixed precision: a constant input of the ingest task (so also
    part of its cache key), which the run's own overrides win over; ingest resolves the
    config with them and records it on the MLflow run, where train reads it."""
    import json

    from pipelines import factory

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(factory.build_pipeline("vae", profile), package_path=str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    ingest = pipeline_task(spec, "ingest")["inputs"]["parameters"]
    assert json.loads(ingest["platform_overrides"]["runtimeValue"]["constant"]) == expected
    assert load_profile(profile).train_defaults == expected


# --- pod security, timeouts, CPU image, multi-worker (issue 12) -------------------------------


@pytest.mark.parametrize("name", profile_names())
def test_every_pipeline_pod_runs_non_root_with_a_timeout_and_the_policy_label(
    compiled: dict[str, dict[str, Any]], name: str
) -> None:
    """kfp-kubernetes 2.17 offers both; without them a hung step holds its node forever and
    pods run as whatever the image says."""
    profile = load_profile(name)
    platform = compiled[name]["platform"]
    for role in ROLES:
        k8s = platform[f"exec-{role}"]
        assert k8s["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }
        assert k8s["activeDeadlineSeconds"] == str(profile.timeouts[role])
        # The egress NetworkPolicies of k8s/pipeline-namespace select genpipe's pods by it.
        assert k8s["podMetadata"]["labels"] == {"genpipe.io/pipeline": "true"}


def test_security_context_can_be_left_out_for_an_older_kfp_backend(tmp_path: Path) -> None:
    """Older KFP drivers refuse unknown fields of the Kubernetes config: one switch, and the
    rest of the platform config (timeouts, GPU) stays."""
    p = load_profile(str(write(tmp_path, "old.yaml", "extends: aks\nsecurity_context: false\n")))
    platform = compile_with(p, tmp_path)["platform"]
    for role in ROLES:
        assert "securityContext" not in platform[f"exec-{role}"]
        assert platform[f"exec-{role}"]["activeDeadlineSeconds"] == str(p.timeouts[role])


def test_timeouts_are_per_role_and_user_profiles_override_one(tmp_path: Path) -> None:
    p = load_profile(str(write(tmp_path, "t.yaml", "extends: gke\ntimeouts: {train: 600}\n")))
    gke = load_profile("gke")
    assert p.timeouts == {**gke.timeouts, "train": 600}
    assert len(set(gke.timeouts.values())) > 1  # really per role
    platform = compile_with(p, tmp_path)["platform"]
    assert platform["exec-train"]["activeDeadlineSeconds"] == "600"


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profiles_run_cpu_roles_on_the_cpu_image(tmp_path: Path, name: str) -> None:
    """The GPU image carries GBs of CUDA; ingest and register never use it."""
    _, executors, _ = compile_factory(tmp_path, profile=name)
    images = {role: executors[f"exec-{role}"]["container"]["image"] for role in ROLES}
    gpu = f"ghcr.io/genpipe/genpipe:{zoo.__version__}-gpu"
    cpu = f"ghcr.io/genpipe/genpipe:{zoo.__version__}-cpu"
    assert images == {
        "ingest": cpu,
        "train": gpu,
        "evaluate": gpu,
        "register": cpu,
        "finalize": cpu,
    }


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_compiles_the_finalize_exit_handler_with_the_platform_config(
    tmp_path: Path, name: str
) -> None:
    """The exit task that ends a killed run's MLflow run runs after every pipeline run, on
    the CPU image with its own small resources, the same Secrets/ConfigMap, security context
    and a timeout as every other step (issue 15)."""
    _, executors, k8s = compile_factory(tmp_path, profile=name)
    spec = next(yaml.safe_load_all((tmp_path / "vae.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    fin = tasks["finalize"]
    assert fin["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    body = fin["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"]
    assert fin["dependentTasks"] == [body]
    # Every other step runs inside the handled group, none outside it.
    assert set(tasks) == {"finalize", body}
    # The handled group holds every step, some inside nested conditions (dsl.If groups).
    inner: set[str] = set()
    todo = [tasks[body]["componentRef"]["name"]]
    while todo:
        for task_name, task in (
            spec["components"][todo.pop()].get("dag", {}).get("tasks", {}).items()
        ):
            inner.add(task_name)
            todo.append(task["componentRef"]["name"])
    assert {"ingest", "train", "evaluate", "register"} <= inner
    profile = load_profile(name)
    container = executors["exec-finalize"]["container"]
    assert container["image"] == profile.image_for("finalize")
    assert container["image"].endswith("-cpu") and "accelerator" not in container["resources"]
    want = profile.resources["finalize"]
    assert container["resources"]["resourceCpuLimit"] == want.cpu_limit
    assert container["resources"]["resourceMemoryLimit"] == want.memory_limit
    pod = k8s["exec-finalize"]
    assert {s["secretName"] for s in pod["secretAsEnv"]} == {SECRET_S3, SECRET_MLFLOW}
    assert {c["configMapName"] for c in pod["configMapAsEnv"]} == {CONFIG_MAP}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["activeDeadlineSeconds"] == str(profile.timeouts["finalize"])
    assert "nodeSelector" not in pod and "tolerations" not in pod
    # The pipeline's output (the MLflow run id) comes from the exit task.
    assert spec["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"] == {
        "outputParameterKey": "Output",
        "producerSubtask": "finalize",
    }


def test_cpu_image_follows_an_image_override_or_is_set_explicitly(tmp_path: Path) -> None:
    _, executors, _ = compile_factory(tmp_path, profile="aks", image="reg.example/gp:2.0-gpu")
    assert executors["exec-ingest"]["container"]["image"] == "reg.example/gp:2.0-cpu"
    assert executors["exec-train"]["container"]["image"] == "reg.example/gp:2.0-gpu"
    path = write(tmp_path, "c.yaml", "extends: eks\ncpu_image: reg.example/slim:{version}\n")
    p = load_profile(str(path))
    assert p.image_for("register") == f"reg.example/slim:{zoo.__version__}"
    assert p.image_for("evaluate") == p.image
    assert load_profile("cpu").image_for("ingest") == load_profile("cpu").image


def _tfjob_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The TFJob the compiled train task creates: its template input, rendered for a run."""
    from genpipe.ops import tfjob

    constant = pipeline_task(spec, "train")["inputs"]["parameters"]["tfjob"]
    template = tfjob.parse_template(constant["runtimeValue"]["constant"])
    return tfjob.render(
        template,
        mlflow_run_id="abc123",
        namespace="kubeflow-user",
        command=tfjob.worker_command(
            "vae", "s3://genpipe/datasets/x/manifest.json", "abc123", "default", "{}"
        ),
    )


def _compile_spec(tmp_path: Path, **kwargs: Any) -> tuple[dict, dict]:
    from pipelines import factory

    path = tmp_path / "mw.yaml"
    compiler.Compiler().compile(factory.build_pipeline("vae", **kwargs), package_path=str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_multi_worker_pipeline_carries_the_profile_into_the_tfjob(
    tmp_path: Path, name: str
) -> None:
    """Issue 12, defect 4: the TFJob is compiled in (no ConfigMap env that never arrives),
    valid against the upstream CRD, scheduled like the profile's GPU pods, locked down and
    cleaned up; the launcher asks for no GPU."""
    import upstream_contracts

    spec, k8s = _compile_spec(tmp_path, profile=name, workers=2)
    job = _tfjob_of(spec)
    upstream_contracts.assert_valid(job)
    profile = load_profile(name)
    selector, tolerations = EXPECTED[name]
    run_policy = job["spec"]["runPolicy"]
    assert run_policy["cleanPodPolicy"] in ("All", "Running")
    assert run_policy["ttlSecondsAfterFinished"] == profile.tfjob_ttl_seconds > 0
    assert run_policy["activeDeadlineSeconds"] == profile.timeouts["train"]
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2
    pod = worker["template"]["spec"]
    assert pod["nodeSelector"] == selector
    assert pod["tolerations"] == tolerations
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert worker["template"]["metadata"]["labels"]["genpipe.io/pipeline"] == "true"
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["privileged"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == profile.accelerator_limit
    assert c["resources"]["requests"]["memory"] == profile.resources["train"].memory_request
    # The workers run the launcher's own image, read from the compiled pipeline.
    launcher = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert c["image"] == launcher["image"] == profile.image
    # Same Secret/ConfigMap keys as every pipeline pod, as references only.
    refs = {(e["name"], next(iter(e["valueFrom"].values()))["name"]) for e in c["env"]}
    expected = {
        (kv["envVar"], s["secretName"])
        for s in k8s["exec-train"]["secretAsEnv"]
        for kv in s["keyToEnv"]
    } | {
        (kv["envVar"], m["configMapName"])
        for m in k8s["exec-train"]["configMapAsEnv"]
        for kv in m["keyToEnv"]
    }
    assert refs == expected and all("value" not in e for e in c["env"])
    # The launcher only waits: no GPU, no GPU-pool placement, small, and it outlives the job.
    assert "accelerator" not in launcher["resources"]
    assert "nodeSelector" not in k8s["exec-train"] and "tolerations" not in k8s["exec-train"]
    assert (
        launcher["resources"]["resourceMemoryLimit"] == profile.resources["launcher"].memory_limit
    )
    assert int(k8s["exec-train"]["activeDeadlineSeconds"]) > run_policy["activeDeadlineSeconds"]
    assert k8s["exec-train"]["fieldPathAsEnv"] == [
        {"name": "GENPIPE_POD_NAMESPACE", "fieldPath": "metadata.namespace"}
    ]
    # evaluate still gets the GPU.
    evaluate = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    assert evaluate["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_single_worker_pipeline_trains_in_its_own_gpu_pod(tmp_path: Path) -> None:
    spec, k8s = _compile_spec(tmp_path, profile="gke")
    params = pipeline_task(spec, "train")["inputs"]["parameters"]
    assert params["tfjob"]["runtimeValue"]["constant"] == ""
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "fieldPathAsEnv" not in k8s["exec-train"]


def test_workers_from_a_user_profile_file(tmp_path: Path) -> None:
    """The documented way on: a profile with `extends:` and `workers:`."""
    path = write(tmp_path, "gke-4.yaml", "extends: gke\nworkers: 4\ntfjob_ttl_seconds: 600\n")
    spec, _ = _compile_spec(tmp_path, profile=str(path))
    job = _tfjob_of(spec)
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 4
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 600
    with pytest.raises(ConfigError, match="workers"):
        _compile_spec(tmp_path, profile="gke", workers=0)
