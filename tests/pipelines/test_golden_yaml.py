"""Golden test: the compiled KFP YAML of every model x built-in profile must not drift.

Refactors of the factory, the platform layer or the components must leave what a cluster
receives byte-identical. The full YAML of one model per profile is kept (so a drift shows as a
readable diff); every other model x profile, and the variants (TFJob workers, a pinned image,
no retries), are held by their SHA-256. After an intended change, regenerate with

    GENPIPE_UPDATE_GOLDEN=1 pytest tests/pipelines/test_golden_yaml.py

and review the diff of tests/pipelines/golden/ before committing it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

import pytest

from pipelines.factory import compile_pipeline
from pipelines.platform import profile_names
from zoo import models

GOLDEN = Path(__file__).parent / "golden"
#: the model whose whole YAML is kept per profile
FULL_MODEL = "vae"
PINNED = "registry.example.com/genpipe@sha256:" + "ab" * 32
#: (name, model, profile, keyword arguments of compile_pipeline)
VARIANTS = [
    ("vae-gke-workers2", "vae", "gke", {"workers": 2}),
    ("gpt-cpu-pinned", "gpt", "cpu", {"image": PINNED}),
    ("ddpm-eks-retries0", "ddpm", "eks", {"retries": 0}),
]
UPDATE = os.environ.get("GENPIPE_UPDATE_GOLDEN") == "1"


def cases() -> list[tuple[str, str, str, dict]]:
    grid = [(f"{m}-{p}", m, p, {}) for m in models.names() for p in profile_names()]
    return grid + VARIANTS


def compiled(tmp_path: Path, model: str, profile: str, kwargs: dict) -> str:
    out = tmp_path / "p.yaml"
    compile_pipeline(model, str(out), profile, **kwargs)
    return out.read_text()


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_compiled_yaml_is_unchanged(tmp_path: Path, case: tuple[str, str, str, dict]) -> None:
    name, model, profile, kwargs = case
    text = compiled(tmp_path, model, profile, kwargs)
    digest = hashlib.sha256(text.encode()).hexdigest()
    full = GOLDEN / f"{name}.yaml"
    keep_full = model == FULL_MODEL and not kwargs
    if UPDATE:
        table = GOLDEN / "sha256.json"
        digests = json.loads(table.read_text()) if table.exists() else {}
        digests[name] = digest
        table.write_text(json.dumps(dict(sorted(digests.items())), indent=1) + "\n")
        if keep_full:
            full.write_text(text)
        return
    if keep_full:
        want = full.read_text()
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), text.splitlines(True), "golden", "now", n=2)
        )
        assert text == want, f"{name}: compiled YAML drifted:\n{diff[:4000]}"
    digests = json.loads((GOLDEN / "sha256.json").read_text())
    assert digest == digests[name], (
        f"{name}: compiled YAML drifted (sha256 {digest[:12]} != golden {digests[name][:12]}); "
        f"diff it against tests/pipelines/golden/{FULL_MODEL}-{profile}.yaml"
    )


def test_golden_covers_every_model_and_profile() -> None:
    # After the grid (also in update mode, which has just rewritten the table).
    digests = json.loads((GOLDEN / "sha256.json").read_text())
    assert set(digests) == {c[0] for c in cases()}, "regenerate: models or profiles changed"
