"""Divergence keeps the last good checkpoint: a run that explodes in its second epoch stops
with TrainingDiverged, and the published checkpoint is still the end of epoch 1, restorable."""

import uuid

import pytest

from zoo.data import fetch, load_source, publish, split
from zoo.errors import TrainingDiverged
from zoo.models import resolve_config
from zoo.train import Trainer


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_divergence_stops_and_keeps_last_good_checkpoint(stack, store, tmp_path, steps_per_call):
    """Also with several steps per compiled call: the loop stops at the first bad step."""
    manifest = publish(split(load_source("digits")), store, source="digits")
    data = fetch(manifest["uri"], store, tmp_path / "cache")
    ckpt = store.uri(f"checkpoints/diverge-{uuid.uuid4().hex[:8]}")
    good = resolve_config("vae", "tiny", {"epochs": 1, "steps_per_epoch": 5})
    Trainer("vae", good, data, tmp_path / "w1", checkpoint_uri=ckpt, store=store).run()
    assert store.get_json(f"{ckpt}/latest.json")["step"] == 5

    # Same run resumed for a second epoch, where every step now "explodes".
    bad = resolve_config(
        "vae",
        "tiny",
        {
            "epochs": 2,
            "steps_per_epoch": 5,
            "max_grad_norm": 1e-3,
            "steps_per_call": steps_per_call,
        },
    )
    with pytest.raises(
        TrainingDiverged, match=r"epoch 2, step 6: gradient norm .* exceeds max_grad_norm"
    ) as e:
        Trainer("vae", bad, data, tmp_path / "w2", checkpoint_uri=ckpt, store=store).run()
    assert ckpt in str(e.value)
    latest = store.get_json(f"{ckpt}/latest.json")
    assert latest["step"] == 5 and latest["epoch"] == 1  # nothing diverged was published

    # The kept checkpoint restores and training continues from it.
    res = Trainer(
        "vae",
        good.__class__(**{**good.__dict__, "epochs": 2}),
        data,
        tmp_path / "w3",
        checkpoint_uri=ckpt,
        store=store,
    ).run()
    assert res.resumed_from_step == 5 and res.steps == 10
