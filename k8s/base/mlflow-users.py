"""Create the pipelines' non-admin MLflow user through MLflow's basic-auth REST API.

Run by Job genpipe-mlflow-users (k8s/base/mlflow.yaml) with the admin credentials. Idempotent:
a missing user is created, an existing one gets the password from the Secret (so rotating
genpipe-mlflow and re-running the Job applies it) and loses admin rights if someone gave them.
Standard library only, so any Python image runs it. Exits 1 with one line naming what failed.

Environment: MLFLOW_TRACKING_URI, MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD (the
admin), MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (the user to create).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MIN_PASSWORD = 12  # MLflow refuses shorter passwords (mlflow.utils.validation)
WAIT_SECONDS = float(os.environ.get("GENPIPE_MLFLOW_WAIT_SECONDS", "600"))


class Failure(Exception):
    """One line for the Job's log."""


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise Failure(f"environment variable {name} is empty or unset (see k8s/secrets)")
    return value


def _call(
    base: str, method: str, path: str, auth: tuple[str, str], body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One REST call as `auth`; (status, JSON body or {})."""
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method)
    req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"message": raw.decode(errors="replace")[:200]}
    return status, parsed if isinstance(parsed, dict) else {}


def _wait_healthy(base: str) -> None:
    """The server may still be migrating its databases when the Job starts."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise Failure(f"MLflow at {base} not healthy after {WAIT_SECONDS:g} s")
        time.sleep(3)


def ensure_user() -> str:
    """Create or update the user; returns what was done."""
    base = _env("MLFLOW_TRACKING_URI").rstrip("/")
    admin = (_env("MLFLOW_AUTH_ADMIN_USERNAME"), _env("MLFLOW_AUTH_ADMIN_PASSWORD"))
    user, password = _env("MLFLOW_TRACKING_USERNAME"), _env("MLFLOW_TRACKING_PASSWORD")
    if user == admin[0]:
        raise Failure(
            f"MLFLOW_TRACKING_USERNAME {user!r} is the admin: pipelines need their own user"
        )
    if len(password) < MIN_PASSWORD:
        raise Failure(f"MLFLOW_TRACKING_PASSWORD of {user!r}: at least {MIN_PASSWORD} characters")
    _wait_healthy(base)

    query = urllib.parse.urlencode({"username": user})
    status, got = _call(base, "GET", f"/api/2.0/mlflow/users/get?{query}", admin)
    if status == 401:
        raise Failure(f"MLflow at {base} rejected the admin credentials of {admin[0]!r} (401)")
    if status == 404:
        status, got = _call(
            base,
            "POST",
            "/api/2.0/mlflow/users/create",
            admin,
            {"username": user, "password": password},
        )
        if status != 200:
            raise Failure(f"creating MLflow user {user!r} failed: HTTP {status} {got}")
        return f"created MLflow user {user!r} (not an admin)"
    if status != 200:
        raise Failure(f"looking up MLflow user {user!r} failed: HTTP {status} {got}")
    status, got = _call(
        base, "PATCH", "/api/2.0/mlflow/users/update-password", admin,
        {"username": user, "password": password},
    )  # fmt: skip
    if status != 200:
        raise Failure(f"setting the password of MLflow user {user!r} failed: HTTP {status} {got}")
    status, got = _call(
        base, "PATCH", "/api/2.0/mlflow/users/update-admin", admin,
        {"username": user, "is_admin": False},
    )  # fmt: skip
    if status != 200:
        raise Failure(f"revoking admin from MLflow user {user!r} failed: HTTP {status} {got}")
    return f"updated MLflow user {user!r}: password from the Secret, not an admin"


def main() -> int:
    try:
        print(ensure_user(), flush=True)
    except Failure as e:
        print(f"genpipe-mlflow-users: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
