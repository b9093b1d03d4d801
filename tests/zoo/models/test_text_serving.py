"""Serving text models: request validation and bounds in generate_from_request."""

import pytest

from zoo import models
from zoo.errors import ConfigError
from zoo.models.text_common import build_vocab
from zoo.serving import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, _request_dict, generate_from_request

SPEC = {"shape": None, "num_classes": None, "vocab": build_vocab("ROMEO: hello there, world\n")}


@pytest.fixture(scope="module")
def model():
    m = models.get("gpt")(models.resolve_config("gpt", "tiny"), SPEC)
    m.build_model()
    return m


def test_text_request_returns_prompt_and_continuation(model):
    req = {"prompt": "ROMEO:", "max_new_tokens": 20, "temperature": 0.8, "seed": 3}
    out = generate_from_request(model, req)
    assert isinstance(out, str) and out.startswith("ROMEO:") and len(out) == 26
    assert out == model.generate("ROMEO:", 20, 0.8, seed=3)
    greedy = generate_from_request(model, {"prompt": "RO", "max_new_tokens": 10, "temperature": 0})
    assert greedy == generate_from_request(
        model, {"prompt": "RO", "max_new_tokens": 10, "temperature": 1.0, "top_k": 1}
    )


def test_one_row_dataframe_request(model):
    import pandas as pd

    req = _request_dict(pd.DataFrame([{"prompt": "RO", "max_new_tokens": 5, "seed": 1}]))
    assert generate_from_request(model, req) == model.generate("RO", 5, seed=1)


@pytest.mark.parametrize(
    "req, match",
    [
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "over the limit"),
        ({"prompt": "x" * 17}, "longer than the model's context of 16"),
        ({"prompt": 5}, "must be a string"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 11}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"n": 4}, "unknown request field"),
    ],
)
def test_text_request_bounds(model, req, match):
    with pytest.raises(ConfigError, match=match):
        generate_from_request(model, req)


def test_signature_declares_every_text_request_field():
    """MLflow drops inputs the signature does not declare: it must declare all of them, with
    the types the validation above accepts."""
    from zoo.serving import TEXT_FIELDS, model_signature

    sig = model_signature("gpt", SPEC)
    declared = {c.name: (c.type.name, c.required) for c in sig.inputs.inputs}
    assert list(declared) == list(TEXT_FIELDS)
    assert declared["prompt"] == ("string", False) and declared["temperature"][0] == "double"
    assert all(not required for _, required in declared.values())  # generate's defaults apply


def test_request_as_mlserver_decodes_it(model):
    """MLServer's MLflow runtime hands the pyfunc a one-row DataFrame of NumPy scalars."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(
        {"prompt": ["RO"], "max_new_tokens": np.array([5], "int64"), "temperature": [0.0]}
    )
    req = _request_dict(df)
    assert req == {"prompt": "RO", "max_new_tokens": 5, "temperature": 0.0}
    assert type(req["max_new_tokens"]) is int  # a Python int, as the bounds check expects
    assert generate_from_request(model, req) == model.generate("RO", 5, 0.0)
