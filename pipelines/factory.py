"""One factory builds every model's pipeline from the four generic components.

    ingest -> train -> evaluate -> [blessed] register, then always: finalize (exit handler)

Platform config (image, GPU, node selectors, tolerations, resources, secrets, security
context, timeouts) is applied in one place, `pipelines.platform`, from a cluster profile
(`pipelines.profile`). With `workers` >= 2 (a profile field, or the `workers` argument) the
train task launches a TFJob whose template `pipelines.platform.tfjob_template` compiles into
the task's inputs.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's real types.

import dataclasses
import json
from typing import Any

from kfp import dsl

from components.evaluate import evaluate
from components.finalize import finalize
from components.ingest import ingest
from components.register import register
from components.train import train
from pipelines.platform import apply_platform, tfjob_template
from pipelines.profile import ROLES, Profile, load_profile
from zoo import names
from zoo.errors import ConfigError
from zoo.models import check_name

_FUNCS = {
    "ingest": ingest,
    "train": train,
    "evaluate": evaluate,
    "register": register,
    "finalize": finalize,
}


def components(image: str) -> dict[str, Any]:
    """The KFP components for one container image (the image already has kfp and genpipe)."""
    return {
        name: dsl.component(fn, base_image=image, install_kfp_package=False)
        for name, fn in _FUNCS.items()
    }


def role_components(profile: Profile) -> dict[str, Any]:
    """The KFP components, each on its role's image (GPU image only where a GPU is used)."""
    return {
        role: dsl.component(
            _FUNCS[role], base_image=profile.image_for(role), install_kfp_package=False
        )
        for role in ROLES
    }


def build_pipeline(
    model_name: str,
    profile: Profile | str = "cpu",
    image: str | None = None,
    retries: int = 2,
    workers: int | None = None,
) -> Any:
    """The KFP pipeline for `model_name` (a registry name), configured for a cluster profile.

    `image` replaces the profile's image (the CPU roles get its `-cpu` twin); `workers`
    replaces the profile's `workers` (>= 2: the train task launches a TFJob of that many).
    """
    check_name(model_name)
    if retries < 0:
        raise ConfigError(f"retries={retries} must be >= 0")
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if image:
        prof = prof.with_image(image)
    if workers is not None:
        prof = dataclasses.replace(prof, workers=workers)  # checked again (ConfigError)
    ops = role_components(prof)
    # The TFJob the train task creates: everything but the run's own parts, fixed at compile
    # time (a constant input, so in the YAML and the task's cache key), never an env var.
    tfjob = json.dumps(tfjob_template(prof), sort_keys=True) if prof.multi_worker else ""
    # The profile's hardware defaults, fixed at compile time (so in the YAML and ingest's
    # inputs); `overrides` from the run win over them. Ingest resolves the config with them
    # (its hash decides whether anything changed since the champion) and records it for train.
    platform_overrides = json.dumps(prof.train_defaults, sort_keys=True)

    def configure(task: Any, role: str) -> Any:
        # Every pipeline run is a tracked experiment, and the data behind `source` can change
        # under the same string: never serve a task from the KFP cache.
        task.set_caching_options(False)
        task.set_display_name(role)
        if retries:
            # Components are idempotent (content-addressed data, resumable checkpoints, one
            # MLflow run per pipeline run, one model version per MLflow run), so retries are safe.
            task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
        return apply_platform(
            task, prof, role, tfjob_launcher=role == "train" and prof.multi_worker
        )

    @dsl.pipeline(
        name=f"genpipe-{model_name.replace('_', '-')}",
        description=f"genpipe: ingest -> train -> evaluate -> register for the {model_name} model",
    )
    def pipeline(
        source: str = "digits",
        preset: str = "default",
        overrides: str = "{}",
        experiment: str = f"genpipe-{model_name}",
        # "": MODEL-DATASET from the run's source (components.common.registered_name)
        registered_name: str = "",
        thresholds: str = "",
        champion_tolerance: float = 0.0,
        test_fraction: float = 0.1,
        resume_from: str = "",
        # False: a run whose data, resolved config and code equal the champion's skips
        # training (ingest's `unchanged_since`); True retrains anyway.
        force: bool = False,
    ) -> str:
        # Runs after everything else, whatever happened: a task killed outright (SIGKILL,
        # OOM, node loss, last retry) cannot end its MLflow run, so this exit task does.
        fin = configure(
            ops["finalize"](experiment=experiment, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            "finalize",
        )
        with dsl.ExitHandler(fin, name="pipeline"):
            ing = configure(
                ops["ingest"](
                    source=source,
                    model=model_name,
                    experiment=experiment,
                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    test_fraction=test_fraction,
                    preset=preset,
                    overrides=overrides,
                    platform_overrides=platform_overrides,
                    registered_name=registered_name,
                    force=force,
                    thresholds=thresholds,
                    champion_tolerance=champion_tolerance,
                ),
                "ingest",
            )
            # Ingest checked the run and recorded it on its MLflow run (config, thresholds,
            # registered name, champion tolerance): the later tasks read it there, the MLflow run is their channel.
            run_id = ing.outputs[names.OUT_RUN_ID]
            # The fastest retrain is the one skipped: a pipeline condition, so it holds on a
            # cluster as locally (KFP's cache cannot see the data behind `source`).
            with dsl.If(ing.outputs[names.OUT_UNCHANGED] == "", name="changed"):
                tr = configure(
                    ops["train"](
                        mlflow_run_id=run_id,
                        dataset=ing.outputs[names.OUT_DATASET],
                        tfjob=tfjob,
                        # An interrupted run's MLflow run id: train starts from its newest checkpoint.
                        resume_from=resume_from,
                    ),
                    "train",
                )
                ev = configure(
                    ops["evaluate"](
                        mlflow_run_id=run_id,
                        dataset=ing.outputs[names.OUT_DATASET],
                        trained_model=tr.outputs[names.OUT_TRAINED_MODEL],
                    ),
                    "evaluate",
                )
                with dsl.If(ev.outputs[names.OUT_BLESSED] == True, name="blessed"):  # noqa: E712 (KFP condition DSL)
                    configure(
                        ops["register"](
                            mlflow_run_id=run_id,
                            better_than_champion=ev.outputs[names.OUT_BETTER],
                            champion_version=ev.outputs[names.OUT_CHAMPION_VERSION],
                            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        ),
                        "register",
                    )
        # The MLflow run id, as finalize found it (a pipeline output cannot come from inside
        # the exit handler; it is the same run ingest created).
        return fin.output

    return pipeline


def compile_pipeline(
    model_name: str,
    output: str,
    profile: Profile | str = "cpu",
    image: str | None = None,
    retries: int = 2,
    workers: int | None = None,
) -> str:
    """Compile the model's pipeline to KFP IR YAML at `output`."""
    from kfp import compiler

    compiler.Compiler().compile(
        build_pipeline(model_name, profile, image, retries, workers), package_path=output
    )
    return output
