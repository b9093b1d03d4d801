"""Which of our modules a logged model carries: the import closure of its load path.

A logged model ships our code with it (MLflow `code_paths`), so a serving runtime needs only
the model's pinned requirements. Shipping the whole `zoo` package cost one artifact upload per
file (53 then, ~1.6 s of every training task); the load path (zoo/serving.py and the model's
own module) needs a handful of them. The closure is read from the source (no imports, so it
costs milliseconds):

* every module's top-level imports (class bodies included: they run at import), except
  `if TYPE_CHECKING:` blocks, which never run;
* in zoo.serving, its function-level imports too: its functions are what a server calls, and
  they import the model registry lazily;
* other function-level imports are lazy by design and, in the model modules, belong to
  training (e.g. `zoo.data` for the input pipeline): not followed. A model whose `generate`
  lazily imports more of `zoo` must import it at module level instead
  (tests/zoo/test_shipping.py loads and generates every model from only these files).

Each file's imports are parsed once per process and file version (its size and mtime): the
warm server's zygote can parse them all before it forks (`prime`), and every training task
it forks then finds them parsed (~0.07 s of each task's log_model, most of it `ast.parse`).
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT.name
#: the load path's entry module: the pickled pyfunc wrapper's class lives there
ENTRY = f"{PACKAGE}.serving"


def _source(module: str) -> Path | None:
    """The file of `module` (a module or a package) in this package, None when it is none."""
    if module == PACKAGE:
        return ROOT / "__init__.py"
    rel = Path(*module.split(".")[1:])
    for path in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.Module, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run on import (and, with `lazy`, those inside functions)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif _is_type_checking(node):
            todo.extend(node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if lazy:
                todo.extend(ast.iter_child_nodes(node))
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """The modules of our package that one import statement may load."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
        base = ".".join(parts + ([base] if base else []))
    # `from pkg import name`: name may be a submodule
    return [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]


def closure(roots: list[str]) -> list[str]:
    """Our modules that importing `roots` (and calling zoo.serving's functions) may load,
    sorted; each package's `__init__` comes with its modules."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        st = path.stat()
        todo.extend(_package_targets(path, module, st.st_mtime_ns, st.st_size))
    return sorted(seen)


@functools.lru_cache(maxsize=512)
def _package_targets(path: Path, module: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The modules of our package that `module` (at `path`) may import; cached per file
    version (`mtime_ns`, `size`: an edited file is parsed again)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in _imports(tree, lazy=module == ENTRY):
        for target in _targets(node, module, path.name == "__init__.py"):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append(target)
    return tuple(found)


def prime() -> None:
    """Parse every model's serving closure now (the warm server's zygote, before it forks)."""
    from zoo import models

    for name in models.names():
        serving_files(name)


def serving_files(model_name: str) -> list[Path]:
    """The source files a logged `model_name` model needs to load and generate, relative to
    the package's parent directory (e.g. zoo/serving.py)."""
    from zoo import models

    model_module = models.REGISTRY[models.check_name(model_name)].partition(":")[0]
    files = [_source(m) for m in closure([ENTRY, model_module])]
    return sorted(p.relative_to(ROOT.parent) for p in files if p is not None)


def stage_serving_code(model_name: str, dest: Path) -> Path:
    """Copy `serving_files(model_name)` under `dest`, keeping their package layout; returns
    the package copy (dest/zoo), what `mlflow.pyfunc.log_model(code_paths=[...])` takes."""
    for rel in serving_files(model_name):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT.parent / rel, dest / rel)
    return dest / PACKAGE
