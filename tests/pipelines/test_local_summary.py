"""Reading a finished run back for `genpipe run` (pipelines.local.summarize, issue 14): the run,
every evaluation artifact's name, and local copies of only the ones the CLI prints, in four
MLflow requests and MLflow's own server-info probe (it was ten: the run twice, the listing
twice, every file downloaded)."""

import uuid

from pipelines.local import SHOWN, summarize
from zoo import names, tracking
from zoo.settings import Settings


def _run_with(files: dict[str, str], tags: dict[str, str] | None = None) -> str:
    c = tracking.client()
    exp = c.create_experiment(f"summary-{uuid.uuid4().hex[:8]}")
    run = c.create_run(exp, tags=tags or {})
    c.log_metric(run.info.run_id, "test_neg_elbo", 12.5)
    for path, text in files.items():
        c.log_text(run.info.run_id, text, path)
    return run.info.run_id


def test_the_printed_artifacts_come_back_in_five_requests(stack, mlflow_requests):
    files = {
        "evaluation/report.html": "<html>report</html>",
        "evaluation/samples.png": "png bytes",
        "evaluation/reconstructions.png": "other png",
        "evaluation/notes.txt": "notes",
        "model/MLmodel": "not evaluation",
    }
    run_id = _run_with(files)
    with mlflow_requests(short=True) as seen:
        res = summarize(Settings.from_env(), "vae", run_id, 1.5)
    assert res.artifacts == sorted(p for p in files if p.startswith("evaluation/"))
    assert res.local_dir is not None
    assert sorted(p.name for p in res.local_dir.iterdir()) == sorted(SHOWN)
    for name in SHOWN:  # the very files, as the CLI prints their paths
        assert (res.local_dir / name).read_text() == files[f"evaluation/{name}"]
    assert res.metrics == {"test_neg_elbo": 12.5} and res.wall_s == 1.5
    # get_run, one listing, the two SHOWN files, and the artifact client's capability probe
    assert sum(seen.values()) == 5, seen
    assert seen["GET get"] == 1 and seen["GET artifacts"] == 1, seen


def test_a_run_without_samples_or_without_evaluation(stack):
    # a text model's evaluation: a report, no samples.png (its download 404s: not an error)
    run_id = _run_with({"evaluation/report.html": "r", "evaluation/samples.txt": "abc"})
    res = summarize(Settings.from_env(), "char_rnn", run_id, 0.0)
    assert res.artifacts == ["evaluation/report.html", "evaluation/samples.txt"]
    assert res.local_dir is not None
    assert [p.name for p in res.local_dir.iterdir()] == ["report.html"]
    # unchanged since the champion: nothing was evaluated, nothing to show
    skipped = _run_with({}, tags={names.TAG_UNCHANGED: "3"})
    res = summarize(Settings.from_env(), "vae", skipped, 0.0)
    assert res.artifacts == [] and res.local_dir is None and res.unchanged_since == "3"
