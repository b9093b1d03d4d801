"""A logged model carries only its load path's modules (zoo.shipping), and they suffice: every
model loads and generates in a fresh interpreter that has no genpipe checkout, only those
files (a model logged with a missing module would fail in its serving container)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from zoo import models, shipping
from zoo.models.text_common import build_vocab
from zoo.train import write_model_config

REPO = Path(__file__).resolve().parents[2]
IMAGE_SPEC = {"shape": [28, 28, 1], "num_classes": 10}
TEXT_SPEC = {"shape": None, "num_classes": None, "vocab": build_vocab("ROMEO: hello there\n")}
#: the smallest request per family (generate's defaults for the rest)
REQUESTS = {"image": {"n": 1, "seed": 0}, "text": {"prompt": "\n", "max_new_tokens": 4}}

CHILD = textwrap.dedent(
    """
    import importlib, json, os, sys

    # No checkout: drop the editable install's finder and every path that offers a `zoo`
    # (the repository; the venv inside it stays).
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]
    sys.path[:] = [p for p in sys.path if p and "__editable__" not in p
                   and not os.path.isdir(os.path.join(p, "zoo"))]
    try:
        import zoo
    except ModuleNotFoundError:
        pass
    else:
        sys.exit(f"zoo importable without shipped code: {zoo.__file__}")
    for case in json.loads(sys.argv[1]):
        for name in [m for m in sys.modules if m == "zoo" or m.startswith("zoo.")]:
            del sys.modules[name]
        sys.path.insert(0, case["code"])
        importlib.invalidate_caches()
        from zoo.serving import generate_from_request, load_model

        model, meta = load_model(case["model_dir"])
        out = generate_from_request(model, case["request"])
        loaded = {n: m.__file__ for n, m in sys.modules.items() if n == "zoo" or n.startswith("zoo.")}
        print("RESULT", json.dumps({"name": case["name"], "out": type(out).__name__,
                                     "shape": list(getattr(out, "shape", [len(out)])),
                                     "loaded": loaded}), flush=True)
        sys.path.remove(case["code"])
    """
)


def save_tiny(name: str, dest: Path) -> Path:
    """A tiny untrained `name` model saved as the trainer saves it."""
    family = models.get(name).family
    spec = TEXT_SPEC if family == "text" else IMAGE_SPEC
    model = models.get(name)(models.resolve_config(name, "tiny"), spec)
    model.build_model()
    dest.mkdir(parents=True)
    model.save(dest / "model.keras")
    write_model_config(dest, name, model.cfg, spec, {"fingerprint": "e" * 64})
    return dest


def test_serving_files_are_the_load_path_only():
    """Far fewer than the package (each is one artifact upload per logged model), never the
    training, data, storage or tracking code, always the pyfunc's module and the model's."""
    every = sorted(p.relative_to(REPO) for p in (REPO / "zoo").rglob("*.py"))
    for name in models.names():
        files = [str(p) for p in shipping.serving_files(name)]
        module = models.REGISTRY[name].partition(":")[0].replace(".", "/") + ".py"
        assert {"zoo/__init__.py", "zoo/serving.py", "zoo/models/__init__.py", module} <= set(
            files
        ), files
        assert not [f for f in files if f.startswith(("zoo/data", "zoo/evaluation"))], files
        assert not {"zoo/train.py", "zoo/storage.py", "zoo/tracking.py"} & set(files), files
        assert len(files) <= 10 < len(every), (len(files), len(every))


def test_every_model_loads_and_generates_from_only_its_shipped_code(tmp_path):
    cases = []
    for name in models.names():
        code = shipping.stage_serving_code(name, tmp_path / "code" / name)
        family = models.get(name).family
        cases.append(
            {
                "name": name,
                "code": str(code.parent),
                "model_dir": str(save_tiny(name, tmp_path / "models" / name)),
                "request": REQUESTS[family],
            }
        )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    res = subprocess.run(
        [sys.executable, str(script), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # not the repository
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""},
    )
    assert res.returncode == 0, res.stderr[-4000:]
    lines = [ln.split(" ", 1)[1] for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    results = {r["name"]: r for r in map(json.loads, lines)}
    assert sorted(results) == models.names()
    for case in cases:
        r = results[case["name"]]
        if case["request"] == REQUESTS["text"]:
            assert r["out"] == "str" and r["shape"][0] >= 1, r
        else:
            assert r["shape"] == [1, 28, 28, 1], r
        # every module of ours came from the shipped copy, and it holds no more than that
        assert all(f.startswith(case["code"]) for f in r["loaded"].values()), r["loaded"]
        assert "zoo.train" not in r["loaded"] and "zoo.data" not in r["loaded"], r["loaded"]


def test_primed_closures_parse_nothing_and_an_edited_file_is_parsed_again(tmp_path, monkeypatch):
    """prime() (the warm zygote, before it forks) leaves log_model's closure nothing to parse
    (it parsed 7 files per training task); a file whose size or mtime changed is parsed again."""
    import ast

    shipping.prime()
    expected = {name: shipping.serving_files(name) for name in models.names()}
    parsed = []
    real = ast.parse
    monkeypatch.setattr(shipping.ast, "parse", lambda *a, **k: parsed.append(a) or real(*a, **k))
    assert {name: shipping.serving_files(name) for name in models.names()} == expected
    assert parsed == []

    src = tmp_path / "mod.py"
    src.write_text("import zoo.names\n")
    st = src.stat()
    assert shipping._package_targets(src, "zoo.mod", st.st_mtime_ns, st.st_size) == ("zoo.names",)
    src.write_text("import zoo.errors, json\n")
    st = src.stat()
    assert shipping._package_targets(src, "zoo.mod", st.st_mtime_ns, st.st_size) == ("zoo.errors",)
    assert len(parsed) == 2
