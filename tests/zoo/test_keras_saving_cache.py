"""Keras 3.15's saving walk never caches its attribute skip-sets (it reads one key and writes
another), so each object of every save/load rebuilds one: zoo.serving primes the key it reads
(issue 14 fixed costs: the train task's model check, evaluate's load, `genpipe generate`)."""

from __future__ import annotations

from keras.src.backend.common import global_state
from keras.src.saving import saving_lib
from model_helpers import in_fresh_thread

from zoo.serving import _SKIPSET_TYPES, prime_keras_saving_cache


def test_primed_skipsets_are_computed_once_and_equal_keras_own():
    def check() -> dict[str, bool]:
        fresh = {t: saving_lib.get_attr_skipset(t) for t in _SKIPSET_TYPES}
        prime_keras_saving_cache()
        return {
            t: saving_lib.get_attr_skipset(t) is saving_lib.get_attr_skipset(t)
            and saving_lib.get_attr_skipset(t) == fresh[t]
            for t in _SKIPSET_TYPES
        }

    assert in_fresh_thread(check) == dict.fromkeys(_SKIPSET_TYPES, True)


def test_priming_leaves_layer_names_as_they_were():
    import keras

    def names(prime: bool) -> list[str]:
        keras.layers.Dense(1)
        if prime:
            prime_keras_saving_cache()
        return [keras.layers.Dense(1).name, keras.layers.Layer().name, keras.Operation().name]

    assert in_fresh_thread(lambda: names(True)) == in_fresh_thread(lambda: names(False))
    assert in_fresh_thread(lambda: global_state.get_global_attribute("object_name_uids")) is None
