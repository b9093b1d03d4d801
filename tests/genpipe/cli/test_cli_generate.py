"""`genpipe generate`: model references and output for both families (registry use is
covered end to end in tests/pipelines/test_text_pipelines.py)."""

import numpy as np
import pytest
from PIL import Image

from pipelines.warm_calls import generate_output
from zoo import models
from zoo.errors import ConfigError
from zoo.models.text_common import build_vocab


def _tiny(name, spec):
    model = models.get(name)(models.resolve_config(name, "tiny"), spec)
    model.build_model()
    return model


def test_text_model_output_is_text():
    model = _tiny(
        "char_rnn", {"shape": None, "num_classes": None, "vocab": build_vocab("abc ROME:")}
    )
    text = generate_output(model, "ROMEO:", 25, 0.0, 0, 0, 64, None)
    assert text.startswith("ROMEO:") and len(text) == 31
    assert text == generate_output(model, "ROMEO:", 25, 0.7, 1, 9, 64, None)  # top_k=1 = greedy


def test_image_model_writes_png_grid(tmp_path):
    model = _tiny("vae", {"shape": [28, 28, 1], "num_classes": 10})
    out = tmp_path / "grid" / "samples.png"
    assert generate_output(model, "", 0, 0.8, 0, 3, 16, out) == str(out)
    img = np.asarray(Image.open(out))
    assert img.ndim >= 2 and img.shape[0] > 28 and img.shape[1] > 28
    with pytest.raises(ConfigError, match="-o/--output"):
        generate_output(model, "", 0, 0.8, 0, 3, 16, None)
