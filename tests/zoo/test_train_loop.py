"""The trainer's compiled loop: several optimizer steps per call (`steps_per_call`) change
neither the result nor where checkpoints fall."""

import numpy as np
import pytest

from zoo.data import fetch, load_source, publish, split
from zoo.models import resolve_config
from zoo.train import Trainer, load_model


@pytest.fixture(scope="module")
def digits(stack, tmp_path_factory):
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    manifest = publish(split(load_source("digits")), store, source="digits")
    return fetch(manifest["uri"], store, tmp_path_factory.mktemp("cache"))


def _train(data, tmp_path, name, **overrides):
    cfg = resolve_config("vae", "tiny", {"epochs": 2, "steps_per_epoch": 5, **overrides})
    steps_seen: list[int] = []
    epochs: list[dict] = []
    res = Trainer(
        "vae",
        cfg,
        data,
        tmp_path / name,
        on_step=steps_seen.append,
        on_epoch=lambda e, m: epochs.append(m),
    ).run()
    model, _ = load_model(res.model_dir)
    return res, model, steps_seen, epochs


def test_steps_per_call_gives_the_same_training(digits, tmp_path):
    one, m1, seen1, ep1 = _train(digits, tmp_path, "one", steps_per_call=1)
    four, m4, seen4, ep4 = _train(digits, tmp_path, "four", steps_per_call=4)
    assert one.steps == four.steps == 10
    assert seen1 == list(range(1, 11))
    assert seen4 == [4, 5, 9, 10]  # a call never runs past the end of an epoch
    for a, b in zip(m1.get_weights(), m4.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for e1, e4 in zip(ep1, ep4, strict=True):
        assert e1["train_loss"] == pytest.approx(e4["train_loss"], rel=1e-5)


def test_calls_stop_at_step_interval_checkpoints(digits, tmp_path):
    """A retried task loses at most `checkpoint_every_steps`: calls end where those fall."""
    _, _, seen, _ = _train(
        digits,
        tmp_path,
        "every3",
        epochs=1,
        steps_per_epoch=10,
        steps_per_call=4,
        checkpoint_every_steps=3,
        checkpoint_every_seconds=0,
    )
    assert seen == [3, 6, 9, 10]
