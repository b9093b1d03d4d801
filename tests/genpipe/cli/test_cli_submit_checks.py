"""`genpipe submit` and `schedule` check the run as `genpipe run` does (zoo.request.RunRequest):
thresholds naming a metric the model never reports and registered names MLflow refuses fail
in one line naming the flag, before anything is compiled or any KFP server is asked."""

import pytest
from cli_helpers import run_cli

#: nothing listens on the discard port: reaching KFP would fail with another message
NO_KFP = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _no_kfp_env(monkeypatch):
    for name in ("GENPIPE_KFP_HOST", "GENPIPE_KFP_TOKEN", "GENPIPE_KFP_COOKIE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["submit", "vae", "--thresholds", '{"test_fdi": {"max": 60}}'],
            ["--thresholds", "model 'vae' reports no metric 'test_fdi'", "test_neg_elbo"],
        ),
        (["submit", "vae", "--name", "team/vae"], ["--name 'team/vae'", "without '/'"]),
        (
            ["schedule", "vae", "--every", "24h", "--thresholds", '{"test_fdi": {"max": 1}}'],
            ["--thresholds", "reports no metric 'test_fdi'"],
        ),
        (
            ["schedule", "vae", "--every", "24h", "--registered-name", "vae:v2"],
            ["--registered-name 'vae:v2'", "':'"],
        ),
        (["submit", "vae", "--test-fraction", "1.5"], ["--test-fraction=1.5", "(0, 1)"]),
        (["submit", "vae", "--preset", "huge"], ["--preset 'huge'", "default, tiny"]),
        (["submit", "vae", "--tolerance", "-0.1"], ["--tolerance -0.1 must be a number >= 0"]),
        (
            ["schedule", "vae", "--every", "24h", "--tolerance", "nan"],
            ["--tolerance nan must be a number >= 0"],
        ),
    ],
)
def test_bad_run_values_fail_before_compiling_or_asking_kfp(capsys, args, needles):
    code, out, err = run_cli([*args, "--host", NO_KFP, "--image", "reg/x:1-cpu"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and not out and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "KFP connect failed" not in err  # KFP was never asked


def test_a_good_request_gets_as_far_as_kfp(capsys):
    """The same options, valid, pass the checks and fail only at the (absent) KFP server."""
    code, _, err = run_cli(
        ["submit", "vae", "--name", "team-vae", "--host", NO_KFP, "--image", "reg/x:1-cpu"], capsys
    )
    assert code == 1 and "KFP connect failed" in err, err
