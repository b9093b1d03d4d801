"""The MLflow pyfunc wrapper every registered model is logged with.

`mlflow models serve` (and `mlflow.pyfunc.load_model(...).predict`) generate samples from a
request such as {"n": 16, "seed": 0} (image models) or {"prompt": ..., "max_new_tokens": ...}
(text models). Request sizes are bounded so one request cannot exhaust the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

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
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in model_input.items()}


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


class GenerativePyfunc(mlflow.pyfunc.PythonModel):
    """Loads `model.keras` + `config.json` (Keras safe mode) and generates on predict."""

    def load_context(self, context: Any) -> None:
        from zoo.train import load_model

        self.model, self.meta = load_model(Path(context.artifacts["model_dir"]))

    def predict(
        self, context: Any, model_input: Any, params: dict[str, Any] | None = None
    ) -> np.ndarray | list[str]:
        out = generate_from_request(self.model, {**_request_dict(model_input), **(params or {})})
        # A list of one string serializes as {"predictions": ["..."]} in `mlflow models serve`.
        return [out] if isinstance(out, str) else out
