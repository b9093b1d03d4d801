"""Property-based: any --set input gives a valid config or a ConfigError, never a crash."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo import models
from zoo.errors import ConfigError

FIELDS = sorted(f.name for f in dataclasses.fields(models.get("vae").config_cls))
values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "none", "", "1e-3", "3,4", "(8, 16)", "-0", "nan", "inf"]),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=4), st.sampled_from(["default", "tiny"]))
def test_overrides_give_valid_config_or_config_error(overrides, preset):
    try:
        cfg = models.resolve_config("vae", preset, overrides)
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message
        return
    cfg.validate()  # what came back is valid
    for key, raw in overrides.items():
        assert key in FIELDS  # unknown keys never pass silently
        assert getattr(cfg, key) is not None or raw.lower() in ("none", "null")
