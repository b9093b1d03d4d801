"""The train component's inputs are checked before anything is fetched, trained or written."""

import pytest

from components.train import run
from zoo.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"platform_overrides": "[1]"}, "platform_overrides '[1]' is not a JSON object"),
        ({"overrides": "{bad"}, "overrides '{bad' is not a JSON object"),
        ({"platform_overrides": '{"precision": "half"}'}, "precision='half' is not one of"),
    ],
)
def test_bad_overrides_name_the_parameter_and_write_nothing(tmp_path, kwargs, message):
    out = tmp_path / "model"
    with pytest.raises(ConfigError) as e:
        run("vae", "s3://nowhere/manifest.json", "run-id", str(out), **kwargs)
    assert message in str(e.value)
    assert not out.exists()


def test_run_overrides_win_over_the_profile_defaults(tmp_path):
    """The profile says float16, the run says float32 and a bad steps_per_call: the run's own
    values are the ones checked (the bad one fails), so they take precedence."""
    with pytest.raises(ConfigError, match="steps_per_call=0 must be >= 1"):
        run(
            "vae",
            "s3://nowhere/manifest.json",
            "run-id",
            str(tmp_path / "model"),
            overrides='{"steps_per_call": 0}',
            platform_overrides='{"precision": "mixed_float16", "steps_per_call": 10}',
        )
