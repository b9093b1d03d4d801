"""Every name that crosses a step boundary: MLflow tag and param keys, aliases, KFP outputs.

The MLflow run is the channel between the pipeline's steps (see components/__init__.py):
ingest writes the run's data, config and code identity, train its model, evaluate its
metrics and blessing, register its model version; the CLI reads the outcome from the same
run. One constant per concept, here, so that a writer and its readers cannot drift apart.

The key STRINGS are stored in existing runs and model versions (a new run is compared with
the champion through them, e.g. `TAG_CONFIG`/`TAG_CODE`): never change one.

The dataset's identity is its **fingerprint** (the sha256 of its content, the manifest's
`fingerprint`): `fingerprint` in code, `TAG_FINGERPRINT` on runs and model versions,
`PARAM_FINGERPRINT` among the run's params, `fingerprint[:MLFLOW_DIGEST_CHARS]` as MLflow's
dataset digest.
"""

from __future__ import annotations

# -- MLflow tags on the run (R) and on model versions (V) ------------------------------------
#: R: the KFP pipeline run id; one MLflow run per pipeline run is found by it
TAG_PIPELINE_RUN = "genpipe.pipeline_run_id"
#: R: the model's registry name (zoo.models), e.g. "vae"
TAG_MODEL = "genpipe.model"
#: R+V: the dataset fingerprint (sha256 of its content)
TAG_FINGERPRINT = "genpipe.dataset_fingerprint"
#: R+V: the commit the code was built from (zoo.tracking.git_commit)
TAG_GIT = "genpipe.git_commit"
#: R+V: sha256 of the model name and its fully resolved training config (config_hash)
TAG_CONFIG = "genpipe.config_hash"
#: R+V: the training code's version (code_version): its commit, plus a digest of local edits
TAG_CODE = "genpipe.code_version"
#: R: the run as ingest checked it, JSON (components.common.record_run/recorded_run): model,
#: preset, merged overrides, resolved config, thresholds, registered name
TAG_RUN_REQUEST = "genpipe.run_request"
#: R: the champion version this run equals (same data, config, code): nothing was trained
TAG_UNCHANGED = "genpipe.unchanged_since"
#: R: the models:/ URI of the run's logged model (set once training logged it)
TAG_MODEL_URI = "genpipe.model_uri"
#: R+V: the primary held-out metric as "name=value" (`primary_tag`, `parse_primary_tag`)
TAG_PRIMARY = "genpipe.primary_metric"
#: R: "true"/"false": did evaluate bless the model
TAG_BLESSED = "genpipe.blessed"
#: R: sha256 of what evaluate's metrics depended on besides the weights (data, split, seed,
#: code, libraries: zoo.evaluation.evaluation_key); equal on the champion's run, its recorded
#: primary metric is reused instead of re-scoring it
TAG_EVAL_KEY = "genpipe.eval_key"
#: R: why not blessed, "; "-joined clauses ("test_fid 61.2 > max 60"), "" when blessed
TAG_NOT_BLESSED = "genpipe.not_blessed"
#: R: the model version register created, and the aliases it moved (comma-separated)
TAG_REGISTERED_VERSION = "genpipe.registered_version"
TAG_ALIASES = "genpipe.aliases"
#: R: why training diverged (zoo.train)
TAG_DIVERGED = "genpipe.diverged"
#: R: the pipeline's error, set by finalize on a run its tasks could not end
TAG_FAILURE = "genpipe.failure"
#: R: on the resuming run "<run id> step <n>"; on the resumed run the run that resumed it
TAG_RESUMED_FROM = "genpipe.resumed_from"
TAG_RESUMED_BY = "genpipe.resumed_by"

# -- MLflow params read by another step -------------------------------------------------------
#: ingest logs the dataset's params under this prefix
DATASET_PARAM_PREFIX = "dataset."
#: the run's `--data` source string
PARAM_SOURCE = "dataset.source"
#: the dataset fingerprint (as `TAG_FINGERPRINT`)
PARAM_FINGERPRINT = "dataset.fingerprint"
PARAM_TEST_FRACTION = "dataset.test_fraction"
#: the config preset (train)
PARAM_PRESET = "preset"
#: the model name (train, with the resolved config's fields beside it)
PARAM_MODEL = "model"

#: MLflow's dataset digest is a short string: the fingerprint's first characters
MLFLOW_DIGEST_CHARS = 20

# -- registry aliases --------------------------------------------------------------------------
ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"

# -- KFP task outputs the pipeline's DAG reads (pipelines.factory) -----------------------------
# KFP takes output names from the component functions' signatures, which must spell them
# literally (KFP runs a component's source alone); tests/components/test_names.py checks
# these against the signatures.
#: ingest -> every later task: the MLflow run (the channel)
OUT_RUN_ID = "mlflow_run_id"
#: ingest -> the pipeline's "changed" condition: "" or the champion version it equals
OUT_UNCHANGED = "unchanged_since"
#: ingest -> train, evaluate: the published dataset (artifact)
OUT_DATASET = "dataset"
#: train -> evaluate: the trained model directory (artifact)
OUT_TRAINED_MODEL = "trained_model"
#: evaluate -> the pipeline's "blessed" condition
OUT_BLESSED = "blessed"
#: evaluate -> register: promote only when better than the champion it was compared with
OUT_BETTER = "better_than_champion"
OUT_CHAMPION_VERSION = "champion_version"


def primary_tag(name: str, value: float) -> str:
    """The `TAG_PRIMARY` value of metric `name` = `value` (6 significant digits)."""
    return f"{name}={value:.6g}"


def parse_primary_tag(text: str) -> tuple[str, float] | None:
    """(name, value) of a `TAG_PRIMARY` value, or None when its value is not a number."""
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        return None
