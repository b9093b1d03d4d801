"""What the warm server (pipelines.warm_server) does before it serves: import what the tasks
and `genpipe run`'s orchestration import (PRELOAD), fill the caches every fork would fill
(`_prime_caches`), and check that TensorFlow's runtime has not started (forking it is unsafe).

`GENPIPE_WARM_DEBUG=1` (each task's own imports) and `GENPIPE_WARM_PROFILE=DIR` (each task's
and the run fork's cProfile) show what is still imported or built after the fork.
"""

from __future__ import annotations

import contextlib
import gc

#: modules a task imports; the zygote imports them before it forks
PRELOAD = (
    "tensorflow",
    "keras",
    "mlflow",
    "mlflow.pyfunc",
    "minio",
    "kfp.dsl.executor_main",
    "zoo.models",
    "zoo.train",
    "zoo.data",
    "zoo.evaluation",
    "zoo.registration",
    "zoo.tracking",
    "zoo.storage",
    "components.ingest",
    "components.train",
    "components.evaluate",
    "components.register",
    # `genpipe run`'s orchestration (pipelines.local_request:run_request runs in a fork)
    "kfp.local",
    "kfp.local.orchestrator.enhanced_dag_orchestrator",
    "pipelines.local_request",
    "pipelines.factory",
    # imported lazily by the tasks (measured with GENPIPE_WARM_DEBUG=1)
    "zoo.evaluation.image",
    "zoo.evaluation.features",
    "zoo.evaluation.metrics",
    "zoo.evaluation.text",
    "zoo.blessing",
    "zoo.grids",
    "zoo.serving",
    "zoo.distributed",
    "mlflow.models",
    "mlflow.tracing",
    "mlflow.data.meta_dataset",
    "mlflow.data.http_dataset_source",
    "git",
    "PIL.Image",
    "sklearn.datasets",
    # imported by every task and the run's fork on their first MLflow call (measured with
    # GENPIPE_WARM_PROFILE: 0.05-0.2 s each): MLflow's tracing set-up, request headers
    "mlflow.tracing.processor.base_mlflow",
    "mlflow.tracing.processor.otel",
    "mlflow.tracing.export.utils",
    "mlflow.tracing.utils.environment",
    "opentelemetry.sdk.metrics",
    "mlflow.tracking.request_header.registry",
    "netrc",
    # and by some tasks: the components' shared code, what log_model and ingest read
    "components.common",
    "components.finalize",
    "zoo.request",
    "zoo.unchanged",
    "zoo.shipping",
    "genpipe.ops.stack",
    "genpipe.ops.mlflow_auth",
    "mlflow.pyfunc.scoring_server",
    "mlflow.pyfunc.utils.environment",
    "pandas.core.methods.to_dict",
    "pyarrow.pandas_compat",
    "PIL.PngImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.BmpImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.PpmImagePlugin",
    "tensorflow.python.data.ops.cache_op",
    "tensorflow.python.data.ops.flat_map_op",
    "tensorflow.python.data.ops.interleave_op",
)


def _assert_tf_not_started() -> None:
    """Forking after TensorFlow created its runtime (thread pools) is unsafe: refuse."""
    from tensorflow.python.eager import context

    if context.context_safe() is not None and context.context()._context_handle is not None:
        raise RuntimeError("TensorFlow runtime started in the zygote; cannot fork safely")


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        # optional ones (e.g. git) missing: the task imports what it needs itself
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from zoo import models

    for name in models.names():  # the model modules (registered Keras classes)
        models.get(name)
    _prime_caches()
    _assert_tf_not_started()
    # Every object so far into the permanent generation: a fork's garbage collections then
    # never walk (and so never copy-on-write) the preloaded modules' pages (Python's gc docs:
    # "gc.freeze() right before fork()"), which made each fork's first seconds slower.
    gc.freeze()


def _prime_caches() -> None:
    """Fill per-process caches every task would fill itself, once, before the fork.

    MLflow's map of installed modules to distributions (packages_distributions(), ~1.2 s),
    built by log_model's requirement check (warn_dependency_requirement_mismatches): a private
    name, so where it is gone (another MLflow) a task builds its map itself, as before. And
    the bundled `digits` data set made MNIST-shaped (zoo.data.sources caches it per process).
    And every model's local pipeline (pipelines.local.prebuild_pipelines): each `genpipe run`
    would build it again (~0.05 s, the profile file parsed, the components made). And Keras'
    attribute skip-sets of its saving walk (zoo.serving.prime_keras_saving_cache). And
    zoo.registration.prime: MLflow's registry store registry, log_model's dry saves.
    """
    from zoo.data.sources import load_digits

    with contextlib.suppress(Exception):  # an optimization only: never fails the server
        from mlflow.utils import requirements_utils

        init = getattr(requirements_utils, "_init_modules_to_packages_map", None)
        if callable(init):
            init()
    with contextlib.suppress(ImportError):  # no scikit-learn: ingest says so itself
        load_digits()
    from pipelines.local import prebuild_pipelines

    prebuild_pipelines()
    # evaluate's first PNG imports PIL's format plugins, its sample metrics scan the loaded
    # libraries for threadpoolctl (0.05-0.2 s each per task; imports and reads only)
    from PIL import Image

    from zoo import blas

    Image.preinit()
    blas.controller()
    # Keras' saving walk rebuilds a skip-set per object it saves or loads (a Keras bug keeps
    # it from caching): stored once here, in the thread the tasks run in (Python only)
    from zoo.serving import prime_keras_saving_cache

    prime_keras_saving_cache()
    # MLflow's model-registry store registry (its first use scans every distribution's entry
    # points) and log_model's model-independent work (zoo.model_logging.prime): reads and
    # temporary local files only, no request, no TensorFlow op, no thread left running
    with contextlib.suppress(Exception):  # an optimization only: never fails the server
        from zoo.registration import prime

        prime()
