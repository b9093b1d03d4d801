"""zoo.mlflow_calls.skip_absent_context_probes: MLflow's per-request header providers stop
re-searching sys.path for modules that are not installed, and nothing else changes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Counts the path searches for MLflow's context probes during 20 header resolutions (what
# every MLflow request does), before and after the skip; prints the headers of both.
_CHILD = textwrap.dedent(
    """
    import json, sys
    from mlflow.tracking.request_header.registry import resolve_request_headers
    from zoo import mlflow_calls

    searched = []

    class Counting:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in mlflow_calls._CONTEXT_PROBES:
                searched.append(name)
            return None

    sys.meta_path.insert(0, Counting())
    before_headers = resolve_request_headers()
    for _ in range(20):
        resolve_request_headers()
    before = len(searched)
    mlflow_calls.skip_absent_context_probes()
    searched.clear()
    for _ in range(20):
        after_headers = resolve_request_headers()
    try:
        import IPython  # noqa: F401
        err = ""
    except ImportError as e:
        err = type(e).__name__
    print(json.dumps({"before": before, "after": len(searched), "err": err,
                      "same": before_headers == after_headers,
                      "json_ok": "json" in sys.modules and sys.modules["json"] is not None}))
    """
)


def test_absent_probes_are_not_searched_again_and_headers_are_unchanged() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] >= 20, got  # MLflow searched on every resolution (~11 per request)
    assert got["after"] == 0, got
    assert got["same"], got
    # `import` of a skipped module fails as a missing one does.
    assert got["err"] == "ModuleNotFoundError", got


def test_installed_or_imported_modules_are_left_alone(monkeypatch) -> None:
    from zoo import mlflow_calls

    monkeypatch.setattr(mlflow_calls, "_CONTEXT_PROBES", ("json", "genpipe_surely_absent_mod"))
    monkeypatch.delitem(sys.modules, "genpipe_surely_absent_mod", raising=False)
    json_mod = sys.modules["json"]
    mlflow_calls.skip_absent_context_probes()
    try:
        assert sys.modules["json"] is json_mod
        assert sys.modules["genpipe_surely_absent_mod"] is None
    finally:
        sys.modules.pop("genpipe_surely_absent_mod", None)
