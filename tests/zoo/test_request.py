"""zoo.request.RunRequest: one check of a run's model, preset, overrides, thresholds, name,
test fraction and champion tolerance, naming the flag (or pipeline parameter) of a bad value."""

import pytest

from zoo.errors import ConfigError
from zoo.request import PARAMS, RunRequest


def test_checked_resolves_config_thresholds_and_default_name():
    run = RunRequest.from_cli(
        "vae", source="npz:/d/kmnist-train-imgs.npz", preset="tiny", sets=["epochs=2"]
    ).checked()
    assert run.config.epochs == 2
    assert run.registered_name == "vae-kmnist-train"
    assert "test_neg_elbo" in run.thresholds
    assert run.request.overrides == {"epochs": "2"}
    assert RunRequest("vae", registered_name="mine").checked().registered_name == "mine"


@pytest.mark.parametrize(
    "request_, flag, value, valid",
    [
        (RunRequest("vea"), "", "'vea'", "vae"),
        (RunRequest("vae", preset="huge"), "--preset", "'huge'", "tiny"),
        (RunRequest("vae", overrides={"epochs": "many"}), "--set", "many", "int"),
        (RunRequest("vae", overrides={"epoch": "2"}), "--set", "epoch", "epochs"),
        (
            RunRequest("vae", thresholds='{"test_fid_typo": {"max": 1}}'),
            "--thresholds",
            "test_fid_typo",
            "test_neg_elbo",
        ),
        (RunRequest("vae", thresholds="{not json"), "--thresholds", "", ""),
        (RunRequest("vae", registered_name="a/b"), "--name", "'a/b'", "without '/'"),
        (RunRequest("vae", test_fraction=1.0), "--test-fraction", "1.0", "(0, 1)"),
        (RunRequest("vae", test_fraction=0.0), "--test-fraction", "0.0", "(0, 1)"),
        (RunRequest("vae", champion_tolerance=-0.05), "--tolerance", "-0.05", ">= 0"),
        (RunRequest("vae", champion_tolerance=float("nan")), "--tolerance", "nan", ">= 0"),
        (RunRequest("vae", champion_tolerance=float("inf")), "--tolerance", "inf", ">= 0"),
    ],
)
def test_bad_values_fail_in_one_line_naming_flag_value_and_choices(request_, flag, value, valid):
    with pytest.raises(ConfigError) as e:
        request_.checked()
    message = str(e.value)
    assert "\n" not in message
    assert flag in message and value in message and valid in message, message


def test_pipeline_parameters_are_named_as_parameters():
    with pytest.raises(ConfigError, match=r"^registered_name 'a:b'"):
        RunRequest("vae", registered_name="a:b").checked(PARAMS)
    with pytest.raises(ConfigError, match=r"^test_fraction=2"):
        RunRequest("vae", test_fraction=2).checked(PARAMS)
    with pytest.raises(ConfigError, match=r"^champion_tolerance=-1 must be a number >= 0"):
        RunRequest("vae", champion_tolerance=-1).checked(PARAMS)


def test_tolerance_is_part_of_the_request():
    req = RunRequest.from_cli("vae", champion_tolerance=0.02)
    assert req.checked().request.champion_tolerance == 0.02
    assert req.to_kwargs()["champion_tolerance"] == 0.02
    with pytest.raises(ConfigError, match=r"^--tolerance -0.5 must be a number >= 0"):
        RunRequest.from_cli("vae", champion_tolerance=-0.5).checked()


def test_from_cli_refuses_a_set_without_value():
    with pytest.raises(ConfigError, match=r"--set: 'epochs' is not key=value"):
        RunRequest.from_cli("vae", sets=["epochs"])


def test_json_forms():
    req = RunRequest.from_cli("vae", sets=["lr=0.1", "epochs=3"])
    assert req.overrides_json() == '{"epochs": "3", "lr": "0.1"}'
    assert RunRequest(**req.to_kwargs()) == req


def test_fields_after_the_model_are_by_name_only():
    """Eight fields, several of one type: a positional slip (source for preset) must fail
    at the call, not pass the type checks."""
    with pytest.raises(TypeError):
        RunRequest("vae", "digits", "tiny")  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunRequest.from_cli("vae", "digits", "tiny")  # type: ignore[misc]
    assert RunRequest("vae", source="digits", preset="tiny").preset == "tiny"
