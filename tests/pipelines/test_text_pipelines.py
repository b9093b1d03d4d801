"""Text pipelines end to end through kfp.local against the real embedded stack.

ingest (text:PATH) -> train -> evaluate -> register for both text models on a slice of
tinyshakespeare with tiny configs; the champion then generates through the CLI
(`genpipe generate NAME@champion --prompt ...`) and through the MLflow pyfunc wrapper.
"""

import uuid
from pathlib import Path

import mlflow.pyfunc
import pytest
from typer.testing import CliRunner

from genpipe.cli import app
from pipelines.local import run_local
from zoo import tracking

SHAKESPEARE = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
)
LOOSE = '{"val_loss": {"max": 10}}'  # tiny models are far from the production threshold


@pytest.fixture
def home(stack, monkeypatch):
    monkeypatch.setenv("GENPIPE_HOME", str(stack.state_dir))
    return stack.state_dir


@pytest.fixture
def text_source(tmp_path):
    path = tmp_path / "shakespeare-head.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return f"text:{path}"


@pytest.mark.parametrize("model", ["gpt", "char_rnn"])
def test_text_pipeline_registers_and_generates(model, home, text_source):
    name = f"{model}-e2e-{uuid.uuid4().hex[:8]}"
    res = run_local(
        model,
        text_source,
        preset="tiny",
        overrides={"epochs": 2, "steps_per_epoch": 10},
        experiment="genpipe-test-text",
        registered_name=name,
        thresholds=LOOSE,
        start_stack=False,
    )
    assert res.blessed and res.registered_version == "1" and "champion" in res.aliases
    m = res.metrics
    assert 0 < m["val_loss"] < 10
    assert m["val_bits_per_char"] == pytest.approx(m["val_loss"] / 0.6931471805599453, rel=1e-6)
    assert {
        "evaluation/report.html",
        "evaluation/sample.txt",
        "evaluation/continuation.txt",
    } <= set(res.artifacts)
    c = tracking.client()
    epoch_samples = [a.path for a in c.list_artifacts(res.mlflow_run_id, "samples")]
    assert epoch_samples == ["samples/epoch_001.txt", "samples/epoch_002.txt"]

    runner = CliRunner()
    out = runner.invoke(
        app, ["generate", f"{name}@champion", "--prompt", "ROMEO:", "--max-new-tokens", "40"]
    )
    assert out.exit_code == 0, out.output
    text = out.output.rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    pred = pyfunc.predict({"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.8})
    assert isinstance(pred, list) and pred[0].startswith("ROMEO:") and len(pred[0]) == 46
    # CLI and serving share the request path: same defaults (seed 0), same text.
    assert pred[0] == text

    too_long = runner.invoke(app, ["generate", f"{name}/1", "--prompt", "x" * 500])
    assert too_long.exit_code != 0
    assert "longer than the model's context" in str(too_long.exception)
    assert c.get_model_version_by_alias(name, "champion").version == "1"
