"""Is a new run the same as the champion? Its data (fingerprint), resolved config
(`config_hash`) and code (`code_version`), compared with the tags the champion's model version
carries (`unchanged_champion`): equal, and ingest skips training (`genpipe run` says
"unchanged since champion vN").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from zoo.names import TAG_CODE, TAG_CONFIG, TAG_FINGERPRINT
from zoo.registration import champion


def code_version(commit: str | None = None) -> str:
    """The version of the training code: GENPIPE_GIT_COMMIT (set in images, which are built
    from a clean tree), else the checkout's commit plus `+` and a digest of its uncommitted
    changes to zoo/ and components/ (so an edited model never passes for the committed one),
    else 'unknown'. `commit`: zoo.tracking.git_commit() when the caller has it."""
    import hashlib
    import subprocess

    from zoo.tracking import git_commit

    commit = git_commit() if commit is None else commit
    if os.environ.get("GENPIPE_GIT_COMMIT") or commit == "unknown":
        return commit
    root = Path(__file__).resolve().parent.parent
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "zoo", "components"],
            cwd=root,
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout
        if not status:
            return commit
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "zoo", "components"],
            cwd=root,
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    h = hashlib.sha256(diff)
    for line in status.decode(errors="replace").splitlines():
        if line.startswith("??"):  # untracked files are not in the diff: hash their content
            path = root / line[3:].strip()
            for f in sorted(path.rglob("*") if path.is_dir() else [path]):
                if f.is_file():
                    h.update(f.as_posix().encode() + f.read_bytes())
    return f"{commit}+{h.hexdigest()[:12]}"


def config_hash(model: str, config: dict[str, Any]) -> str:
    """sha256 of `model` and its resolved config (zoo.config.to_dict): equal iff training would
    be configured identically, whatever preset or overrides spelled it."""
    import hashlib

    blob = json.dumps({"model": model, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def unchanged_champion(
    c: MlflowClient, name: str, fingerprint: str, config: str, code: str
) -> str | None:
    """The version of `name@champion` when it was trained on the same data (fingerprint), the
    same resolved config (config hash) and the same code (`code_version`), else None.

    Unknown code never matches: code that cannot be identified may have changed. Versions
    registered before config and code were recorded never match either (they retrain once).
    """
    current = champion(c, name)
    if current is None or not code or code == "unknown":
        return None
    tags = current.tags or {}
    same = (
        tags.get(TAG_FINGERPRINT) == fingerprint
        and tags.get(TAG_CONFIG) == config
        and tags.get(TAG_CODE) == code
    )
    return str(current.version) if same else None
