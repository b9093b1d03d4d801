"""Sample-quality metrics, the cached domain feature extractor and the bits/dim convention.

The feature extractor is trained on the offline digits data, published to the real object
store of the session stack, and read back from it (no mocks of our storage).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from zoo import blas
from zoo.data import fetch, load_source, load_split_arrays, publish, split
from zoo.errors import DataError
from zoo.evaluation import features as F
from zoo.evaluation import metrics as M


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_mean_shift(rng):
    a = rng.standard_normal((500, 16))
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    # Two Gaussians with identity covariance: FID = ||mu1 - mu2||^2 (here 16 * 2^2 = 64).
    b = rng.standard_normal((20000, 16))
    assert M.fid(b, b + 2.0) == pytest.approx(64.0, rel=1e-6)
    assert M.fid(rng.standard_normal((4000, 16)), rng.standard_normal((4000, 16)) + 2.0) == (
        pytest.approx(64.0, rel=0.05)
    )


def test_fid_is_real_and_finite_for_rank_deficient_features(rng):
    # Fewer samples than dimensions: singular covariances (sqrtm of the product goes complex).
    a, b = rng.random((20, 64)), rng.random((20, 64))
    v = M.fid(a, b)
    assert np.isfinite(v) and v >= 0.0


def test_kid_and_precision_recall(rng):
    a = rng.standard_normal((400, 8))
    b = rng.standard_normal((400, 8))
    shifted = M.kid(a, b + 1.0)
    # Unbiased MMD^2: ~0 for two samples of one distribution, clearly positive otherwise.
    assert shifted > 0.5 and abs(M.kid(a, b)) < 0.05 * shifted
    assert M.precision_recall(a, a) == (1.0, 1.0)
    # Samples collapsed onto one point far from the data: no precision, no recall.
    collapsed = np.full((400, 8), 10.0)
    assert M.precision_recall(a, collapsed) == (0.0, 0.0)
    with pytest.raises(DataError, match="equal D"):
        M.fid(a, a[:, :4])


def test_histogram_checks_flag_mode_collapse():
    labels = np.arange(1000) % 10
    fair = M.histogram_checks(labels, labels, 10)
    assert fair["class_entropy_bits"] == pytest.approx(math.log2(10))
    assert fair["class_tv"] == 0.0 and fair["classes_covered"] == 10
    collapsed = M.histogram_checks(np.full(1000, 3), labels, 10)
    assert collapsed["class_entropy_bits"] == 0.0 and collapsed["class_max_share"] == 1.0
    assert collapsed["class_tv"] == pytest.approx(0.9)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, stack):
    from zoo.storage import ObjectStore

    store = ObjectStore.from_env()
    m = publish(split(load_source("digits"), 0.1), store, "digits")
    return fetch(m["uri"], store, tmp_path_factory.mktemp("cache")), store


def test_feature_extractor_is_cached_by_fingerprint_and_separates_noise_from_data(digits):
    data, store = digits
    F._MEMO.pop(data.fingerprint, None)
    fe = F.get_extractor(data, store)
    assert fe.kind == "classifier" and fe.train_accuracy > 0.8
    pointer = store.uri(f"datasets/{data.fingerprint}/feature_extractor/{F.VERSION}/manifest.json")
    meta = store.get_json(pointer)
    assert meta["uri"] == fe.uri and store.exists(fe.uri) and meta["num_classes"] == 10

    x, y = load_split_arrays(data, "test")
    # A second process (empty memo) loads the very same model from the store.
    F._MEMO.pop(data.fingerprint)
    again = F.get_extractor(data, store)
    np.testing.assert_allclose(again.features(x), fe.features(x), atol=1e-5)
    assert np.mean(again.predict(x) == y) == pytest.approx(fe.train_accuracy)

    xt, _ = load_split_arrays(data, "train")
    real_t, real_h = fe.features(xt[:180]), fe.features(x)
    noise = fe.features(np.random.default_rng(1).random(x.shape).astype("float32"))
    assert M.fid(real_h, real_h) == pytest.approx(0.0, abs=1e-6)
    floor = M.fid(real_t, real_h)
    assert M.fid(noise, real_h) > 10 * floor


def test_concurrent_callers_load_the_extractor_once_and_prepare_never_trains(
    digits, tmp_path, monkeypatch
):
    """evaluate loads the cached extractor in a thread beside its held-out pass
    (zoo.evaluation.prepare): a caller meanwhile waits for that one, loads no second copy;
    and an extractor not yet cached is left to get_extractor (training seeds Keras' global
    random state, which another thread's Keras calls would consume)."""
    import threading

    import keras

    from zoo.storage import ObjectStore

    data, store = digits
    F.get_extractor(data, store)  # cached in the store (trained once if not yet)
    loads = []
    real = keras.models.load_model

    def counting(*args, **kwargs):
        loads.append(args[0])
        time.sleep(0.3)  # a slow load: the callers overlap whatever the machine's load
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.models, "load_model", counting)
    F._MEMO.pop(data.fingerprint)
    got, gate = [], threading.Barrier(2)

    def caller():
        gate.wait()
        got.append(F.get_extractor(data, store))

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and got[0] is got[1]

    # prepare: the memoized splits and extractor that evaluate then reads (no second load)
    from zoo.evaluation import prepare

    F._MEMO.pop(data.fingerprint)
    prepare("image", data, "test")
    assert len(loads) == 2 and F.get_extractor(data, store) is F._MEMO[data.fingerprint]
    assert len(loads) == 2 and "test" in data.__dict__["_eval_arrays_memo"]

    # not cached: nothing trained, nothing written, nothing memoized
    other = fetch(
        publish(split(load_source("digits"), 0.3), store, "digits")["uri"],
        store,
        tmp_path,
    )
    assert other.fingerprint != data.fingerprint
    prefix = f"datasets/{other.fingerprint}/feature_extractor/{F.VERSION}/manifest.json"
    assert F.load_cached_extractor(other, ObjectStore.from_env()) is None
    assert other.fingerprint not in F._MEMO and not store.exists(store.uri(prefix))
    assert len(loads) == 2


def test_feature_extractor_without_labels_is_an_autoencoder(digits):
    data, _ = digits
    x, _ = load_split_arrays(data, "train")
    model = F.train_extractor(x[:256], None, 0, steps=20)
    fe = F.FeatureExtractor(model, "autoencoder", 0, float("nan"))
    assert fe.features(x[:8]).shape == (8, F.FEATURE_DIM) and not fe.has_classes
    with pytest.raises(Exception, match="no labels"):
        fe.predict(x[:8])


def test_one_blas_thread_limits_blas_and_keeps_the_values(rng):
    from threadpoolctl import threadpool_info

    a, b = rng.standard_normal((300, 64)), rng.standard_normal((300, 64)) + 0.5
    free = (M.fid(a, b), M.kid(a, b), *M.precision_recall(a, b))
    with blas.one_thread():
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {1}
        limited = (M.fid(a, b), M.kid(a, b), *M.precision_recall(a, b))
    assert limited == pytest.approx(free, rel=1e-12)
