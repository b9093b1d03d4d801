"""The MLflow pyfunc wrapper every registered model is logged with, and what it declares.

`mlflow models serve`, MLServer's MLflow runtime (KServe) and `mlflow.pyfunc.load_model(...)`
generate samples from a request such as {"n": 16, "seed": 0} (image models) or
{"prompt": ..., "max_new_tokens": ...} (text models). Request sizes are bounded so one request
cannot exhaust the server.

This module is the whole load path of a logged model: a serving container has only the
model's declared requirements (`registration.model_requirements`) plus our package, shipped with
the model as code. So it imports no storage, tracking, training or pipeline code (no minio,
boto3, tenacity, kfp): only MLflow, NumPy, Keras/TensorFlow and `zoo.models`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

from zoo.errors import ConfigError

MAX_SAMPLES = 256


def _request_dict(model_input: Any) -> dict[str, Any]:
    """Normalize a pyfunc input (dict, one-row DataFrame, list of one dict) to a dict."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        rows = model_input.to_dict(orient="records")
        if len(rows) != 1:
            raise ConfigError(f"expected one request row, got {len(rows)}")
        model_input = rows[0]
    if isinstance(model_input, list) and len(model_input) == 1:
        model_input = model_input[0]
    if not isinstance(model_input, dict):
        raise ConfigError(
            f"expected a request like {{'n': 16, 'seed': 0}}, got {type(model_input).__name__}"
        )
    # NumPy scalars (a DataFrame cell) become Python numbers; arrays (cgan labels) stay arrays.
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in model_input.items()}


def _int_field(req: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = req.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
        raise ConfigError(f"request field {key}={v!r} is not an integer")
    if not lo <= int(v) <= hi:
        raise ConfigError(f"request field {key}={int(v)} is out of range [{lo}, {hi}]")
    return int(v)


#: bounds of a text request: generated characters and prompt length (the model's own
#: context limit applies too and is usually smaller)
MAX_NEW_TOKENS = 2000
MAX_PROMPT_CHARS = 4096
TEXT_FIELDS = ("prompt", "max_new_tokens", "temperature", "top_k", "seed")


def _text_request(model: Any, request: dict[str, Any]) -> str:
    """Validate a text request {"prompt", "max_new_tokens", "temperature", "top_k", "seed"}."""
    unknown = sorted(set(request) - set(TEXT_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown request field(s) {', '.join(unknown)}; text models take {', '.join(TEXT_FIELDS)}"
        )
    prompt = request.get("prompt", "\n")
    if not isinstance(prompt, str):
        raise ConfigError(f"request field prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"request field prompt has {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}"
        )
    temperature = request.get("temperature", 0.8)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"request field temperature={temperature!r} is not a number")
    if not 0.0 <= float(temperature) <= 10.0:
        raise ConfigError(f"request field temperature={temperature} is out of range [0, 10]")
    return model.generate(
        prompt=prompt,
        max_new_tokens=_int_field(request, "max_new_tokens", 200, 0, MAX_NEW_TOKENS),
        temperature=float(temperature),
        top_k=_int_field(request, "top_k", 0, 0, model.codec.size),
        seed=_int_field(request, "seed", 0, 0, 2**31 - 1),
    )


def generate_from_request(model: Any, request: dict[str, Any]) -> np.ndarray | str:
    """Validate a request and generate (the one place serving paths share).

    Image models return [n, H, W, C] float images; text models return the prompt followed by
    the generated text.
    """
    if getattr(model, "family", "image") == "text":
        return _text_request(model, request)
    n = _int_field(request, "n", 16, 1, MAX_SAMPLES)
    seed = _int_field(request, "seed", 0, 0, 2**31 - 1)
    extra = {k: v for k, v in request.items() if k not in ("n", "seed")}
    if "labels" in extra and extra["labels"] is not None:
        extra["labels"] = np.asarray(extra["labels"], dtype="int64")
    return model.generate(n, seed=seed, **extra)


#: generate() keyword arguments a served request may carry besides n and seed, per model; a
#: field missing from the signature never reaches the model (MLflow drops undeclared inputs).
IMAGE_EXTRAS: dict[str, dict[str, Any]] = {
    "cgan": {"labels": Array(DataType.long)},
    "ddpm": {"sampler": DataType.string, "steps": DataType.long},
    "realnvp": {"temperature": DataType.double},
}
_TEXT_TYPES = {
    "prompt": DataType.string,
    "max_new_tokens": DataType.long,
    "temperature": DataType.double,
    "top_k": DataType.long,
    "seed": DataType.long,
}


def model_signature(model_name: str, data_spec: dict[str, Any]) -> ModelSignature:
    """The request fields (all optional: generate's defaults apply) and the output of a model.

    One row of named columns: MLServer's MLflow runtime then decodes a V2 request whose inputs
    are named like the fields (`n`, `seed`, or `prompt`, `max_new_tokens`, ...) into the
    one-row DataFrame `predict` takes, with no content type in the request.
    """
    from zoo import models

    if models.get(model_name).family == "text":
        fields = dict(_TEXT_TYPES)
        outputs = Schema([ColSpec(DataType.string, "text")])
    else:
        fields = {"n": DataType.long, "seed": DataType.long, **IMAGE_EXTRAS.get(model_name, {})}
        shape = tuple(int(d) for d in data_spec["shape"])
        outputs = Schema([TensorSpec(np.dtype("float32"), (-1, *shape), "images")])
    inputs = Schema([ColSpec(t, name, required=False) for name, t in fields.items()])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(model_name: str) -> dict[str, Any]:
    """The smallest useful request (MLflow stores it with the model and tries it once)."""
    from zoo import models

    if models.get(model_name).family == "text":
        return {"prompt": "\n", "max_new_tokens": 8, "seed": 0}
    return {"n": 1, "seed": 0}


#: the object types whose attribute skip-sets Keras' saving walk asks for (a model, its
#: layers, its Sequential/Functional parts)
_SKIPSET_TYPES = ("Operation", "Layer", "Functional", "Sequential")


def prime_keras_saving_cache() -> None:
    """Cache Keras' attribute skip-sets for saving/loading in this thread, once.

    Keras 3.15's `saving_lib.get_attr_skipset` reads the cache key `saving_attr_skiplist_*`
    but writes `saving_attr_skipset_*`, so it never hits: every object a save or load walks
    builds a throw-away Layer and its dir() again (15 times per VAE load). We store each
    result under the key it reads. Pure Python (no TensorFlow op: the warm server calls this
    before it forks); the auto-naming counters the reference Layers bump are restored, so
    layer names stay what they would have been. A Keras without the bug (or without the
    function) is left alone.
    """
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    get = getattr(saving_lib, "get_attr_skipset", None)
    if get is None:
        return
    uids = global_state.get_global_attribute("object_name_uids")
    saved_uids = None if uids is None else dict(uids)
    try:
        for obj_type in _SKIPSET_TYPES:
            key = f"saving_attr_skiplist_{obj_type}"
            if global_state.get_global_attribute(key) is None:
                global_state.set_global_attribute(key, get(obj_type))
    finally:
        uids = global_state.get_global_attribute("object_name_uids")
        if uids is not None:
            uids.clear()
            uids.update(saved_uids or {})


def load_model(model_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load `model.keras` (Keras safe mode) and its `config.json` from a model directory."""
    import keras

    from zoo import models

    prime_keras_saving_cache()
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "config.json").read_text())
    models.get(meta["model"])  # imports and registers the class for deserialization
    model = keras.models.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    return model, meta


class GenerativePyfunc(mlflow.pyfunc.PythonModel):
    """Loads `model.keras` + `config.json` (Keras safe mode) and generates on predict."""

    def load_context(self, context: Any) -> None:
        self.model, self.meta = load_model(Path(context.artifacts["model_dir"]))

    # `model_input` unannotated: MLflow validates inputs by the type hint of a PythonModel's
    # predict, supports only list[...] and the like, and warned (in red, on every process that
    # imports this module: `genpipe generate`, serve, every task) for `Any`.
    def predict(
        self, context: Any, model_input, params: dict[str, Any] | None = None
    ) -> np.ndarray | list[str]:
        out = generate_from_request(self.model, {**_request_dict(model_input), **(params or {})})
        # A list of one string serializes as {"predictions": ["..."]} in `mlflow models serve`
        # and as one BYTES output in MLServer.
        return [out] if isinstance(out, str) else out
