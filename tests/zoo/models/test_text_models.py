"""Text models: causal masking, sampling semantics, stateful priming, windows and vocabulary."""

import math

import numpy as np
import pytest
import tensorflow as tf

from zoo import models
from zoo.data import LocalDataset
from zoo.errors import ConfigError
from zoo.models.text_common import UNK_ID, Codec, build_vocab, sample_next
from zoo.train import data_spec_from_manifest

TRAIN = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
VAL = "All:\nSpeak, speak.\nZounds! Xylophones?\n" * 4  # Z, X, y, ? are not in TRAIN
SPEC = {"shape": None, "num_classes": None, "vocab": build_vocab(TRAIN)}
TEXT_MODELS = [n for n in models.names() if models.get(n).family == "text"]


def _model(name, **overrides):
    cls = models.get(name)
    cfg = models.resolve_config(name, "tiny", overrides)
    model = cls(cfg, SPEC)
    model.build_model()
    return model


def _local_text(tmp_path, train=TRAIN, val=VAL):
    shards, splits = {}, {}
    for name, text in (("train", train), ("val", val)):
        p = tmp_path / f"{name}.txt"
        p.write_text(text, encoding="utf-8")
        shards[name] = [p]
        splits[name] = {"count": len(text), "shards": [{"key": f"s3://b/d/{name}.txt"}]}
    return LocalDataset(
        {"kind": "text", "fingerprint": "f" * 64, "splits": splits}, tmp_path, shards
    )


def test_gpt_causal_mask_future_tokens_do_not_change_earlier_logits():
    model = _model("gpt", dropout=0.0)
    rng = np.random.default_rng(0)
    x = rng.integers(1, len(SPEC["vocab"]), (2, 16)).astype("int32")
    base = model.logits(tf.constant(x)).numpy()
    for j in (5, 11, 15):
        changed = x.copy()
        changed[:, j] = (changed[:, j] % (len(SPEC["vocab"]) - 1)) + 1  # a different real id
        out = model.logits(tf.constant(changed)).numpy()
        np.testing.assert_allclose(out[:, :j], base[:, :j], atol=1e-5)
        # ...while the changed position itself (and later ones) do see the change.
        assert not np.allclose(out[:, j:], base[:, j:], atol=1e-5)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_sampling_greedy_topk1_and_seeds(name):
    model = _model(name)
    greedy = model.generate("First", 40, temperature=0.0, seed=1)
    assert greedy == model.generate("First", 40, temperature=0.0, seed=99)  # seed irrelevant
    assert model.generate("First", 40, temperature=1.3, top_k=1, seed=5) == greedy
    a = model.generate("First", 60, temperature=1.0, seed=3)
    assert a == model.generate("First", 60, temperature=1.0, seed=3)
    assert a != model.generate("First", 60, temperature=1.0, seed=4)
    assert len(a) == len("First") + 60 and a.startswith("First")
    assert model.generate("First", 0) == "First"


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_generation_matches_full_forward_pass(name):
    """Priming + incremental steps (RNN state / GPT window) give the full-sequence logits."""
    model = _model(name)
    text = "Before we pro"
    ids = model.codec.encode(text)
    full = model.logits(tf.constant(ids[None])).numpy()[0]
    logits, state = model._prime(ids[:5])
    np.testing.assert_allclose(logits, full[4], atol=1e-4)
    for k in range(5, len(ids)):
        logits, state = model._advance(state, int(ids[k]))
        np.testing.assert_allclose(logits, full[k], atol=1e-4)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_prompt_longer_than_context_is_refused(name):
    model = _model(name)
    n = model.context_length
    assert model.generate("e" * n, 3, seed=0).startswith("e" * n)
    with pytest.raises(ConfigError, match=rf"prompt has {n + 1} characters.*context of {n}"):
        model.generate("e" * (n + 1), 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 10_000}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"prompt": 64}, "prompt must be a string"),
    ],
)
def test_bad_generation_arguments_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _model("gpt").generate(**{"prompt": "F", **kwargs})


def test_unknown_prompt_characters_map_to_unk_and_are_kept_verbatim():
    codec = Codec(SPEC["vocab"])
    ids = codec.encode("Fé€😀Z")
    assert ids[0] == codec.index["F"] and list(ids[1:]) == [UNK_ID] * 4
    assert codec.unknown_chars("Fé€😀Z") == sorted("é€😀Z")
    model = _model("char_rnn")
    out = model.generate("Zé!", 30, temperature=1.0, seed=0)
    assert out.startswith("Zé!")
    assert set(out[3:]) <= set(SPEC["vocab"][1:])  # <unk> is never generated


def test_sample_next_never_returns_unk_and_respects_top_k():
    rng = np.random.default_rng(0)
    logits = np.array([50.0, 1.0, 2.0, 3.0, 0.5])
    assert sample_next(logits, 0.0, 0, rng) == 3
    draws = {sample_next(logits, 5.0, 2, rng) for _ in range(200)}
    assert draws == {2, 3}


def test_vocab_is_built_on_the_training_split(tmp_path):
    data = _local_text(tmp_path)
    spec = data_spec_from_manifest(data.manifest, data)
    assert spec["vocab"] == ["<unk>", *sorted(set(TRAIN))]
    assert "Z" not in spec["vocab"] and "?" not in spec["vocab"]
    # Image manifests are unchanged.
    assert data_spec_from_manifest({"kind": "image", "shape": [28, 28, 1], "num_classes": 10}) == {
        "shape": [28, 28, 1],
        "num_classes": 10,
    }


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_windows_val_contiguous_and_train_seeded(name, tmp_path):
    data = _local_text(tmp_path)
    model = _model(name)
    t, c = model.cfg.nchars, model.context_length  # training window, held-out window
    val = list(model.make_dataset(data, "val", batch_size=4, shuffle=False))
    x = np.concatenate([b["x"].numpy() for b in val])
    y = np.concatenate([b["y"].numpy() for b in val])
    assert x.shape == ((len(VAL) - 1) // c, c)
    ids = model.codec.encode(VAL)
    np.testing.assert_array_equal(x.reshape(-1), ids[: x.size])
    np.testing.assert_array_equal(y.reshape(-1), ids[1 : x.size + 1])
    assert (ids == UNK_ID).any()  # held-out characters outside the vocabulary become <unk>

    def train_x(seed):
        ds = model.make_dataset(data, "train", batch_size=8, shuffle=True, seed=seed)
        return np.concatenate([b["x"].numpy() for b in ds])

    a = train_x(1)
    assert a.shape == (len(TRAIN) // 8 * 8, t)
    np.testing.assert_array_equal(a, train_x(1))
    assert not np.array_equal(a, train_x(2))
    batch = next(iter(model.make_dataset(data, "train", 8, shuffle=True, seed=1)))
    np.testing.assert_array_equal(batch["x"].numpy()[:, 1:], batch["y"].numpy()[:, :-1])


def test_char_rnn_context_is_longer_than_its_training_window(tmp_path):
    """Held-out windows and the prompt limit are `context`; training windows are `nchars`."""
    model = _model("char_rnn", nchars=8, context=24)
    assert model.context_length == 24
    data = _local_text(tmp_path)
    (val,) = list(model.make_dataset(data, "val", batch_size=64, shuffle=False))
    assert val["x"].shape == ((len(VAL) - 1) // 24, 24)
    train = next(iter(model.make_dataset(data, "train", 4, shuffle=True, seed=0)))
    assert train["x"].shape == (4, 8)
    assert len(model.generate("F" * 24, 3)) == 27
    with pytest.raises(ConfigError, match="longer than the model's context of 24"):
        model.generate("F" * 25, 3)
    # A context below the training window means the training window (an older config).
    assert _model("char_rnn", nchars=8, context=4).context_length == 8
    with pytest.raises(ConfigError, match="context=0"):
        models.resolve_config("char_rnn", "tiny", {"context": 0})
    assert models.resolve_config("char_rnn", "default").context == 256


def test_untrained_loss_is_near_uniform():
    model = _model("gpt")
    x = np.random.default_rng(0).integers(1, len(SPEC["vocab"]), (4, 17)).astype("int32")
    loss = model.eval_batch({"x": tf.constant(x[:, :-1]), "y": tf.constant(x[:, 1:])})["loss"]
    assert loss.shape == (4,)
    assert np.all(np.abs(loss.numpy() - math.log(len(SPEC["vocab"]))) < 0.5)


@pytest.mark.parametrize(
    "name, key, value, match",
    [
        ("gpt", "n_head", 3, "divisible"),
        ("char_rnn", "cell", "rnn", "gru, lstm"),
        ("gpt", "dropout", 1.0, "dropout"),
        ("char_rnn", "decay_steps", -1, "decay_steps=-1"),
        ("gpt", "lr_floor", 1.5, "lr_floor=1.5"),
        ("char_rnn", "budget_cpu_s", -1.0, "budget_cpu_s=-1.0"),
    ],
)
def test_bad_config_values_are_named(name, key, value, match):
    with pytest.raises(ConfigError, match=match):
        models.resolve_config(name, "tiny", {key: value})


def test_char_rnn_lstm_and_untied_gpt_work():
    lstm = _model("char_rnn", cell="lstm", n_layers=2)
    assert lstm.generate("Fi", 10, temperature=0.0) == lstm.generate("Fi", 10, top_k=1, seed=3)
    gpt = _model("gpt", tie_weights=False)
    assert gpt.head is not None and len(gpt.generate("Fi", 10, seed=0)) == 12


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_decay_steps_ends_the_cosine_then_the_rate_stays_at_its_floor(name):
    # A run ended by a CPU budget (bench_quality) must reach the low rate inside the steps it
    # makes: with decay_steps the cosine ends there, not at epochs x steps_per_epoch.
    lr = 1e-2
    cfg = dict(learning_rate=lr, epochs=4, steps_per_epoch=250, warmup_steps=0, cosine_decay=True)

    def rate(opt):  # the optimizer's rate at a given step, through its public step counter
        def at(step):
            opt.iterations.assign(step)
            return float(opt.learning_rate)

        return at

    planned = rate(_model(name, **cfg).make_optimizers()["main"])
    short = rate(_model(name, decay_steps=100, **cfg).make_optimizers()["main"])
    assert planned(100) > 0.9 * lr  # the plan's cosine has barely begun at step 100
    for step in (100, 400, 900):
        assert short(step) == pytest.approx(0.1 * lr)
    assert short(50) == pytest.approx(planned(500))  # halfway either way
    floor = rate(_model(name, decay_steps=100, lr_floor=0.0, **cfg).make_optimizers()["main"])
    assert floor(100) == pytest.approx(0.0, abs=1e-9) and floor(0) == pytest.approx(lr)


def test_budget_cpu_s_makes_the_cosine_follow_cpu_seconds_not_steps():
    # A budgeted run's cosine ends when the CPU seconds are spent, however many steps that
    # was: the step counter does not move the rate, the process's CPU time does.
    import time

    lr = 1e-2
    opt = _model("char_rnn", learning_rate=lr, budget_cpu_s=0.4, warmup_steps=0).make_optimizers()[
        "main"
    ]
    opt.iterations.assign(10_000)
    assert float(opt.learning_rate) > 0.8 * lr
    t0 = time.process_time()
    while time.process_time() - t0 < 0.5:
        pass
    assert float(opt.learning_rate) == pytest.approx(0.1 * lr)
