"""Cheap authentication for the embedded MLflow server (`genpipe.ops.stack`), loaded BY that server.

MLflow's basic-auth app (`mlflow server --app-name basic-auth`) calls the ini's
`authorization_function` on every request. Its default checks the password against a
werkzeug scrypt hash in the auth database: ~0.6 s of CPU per request. The stack's password is
a 256-bit random token, which needs no slow hash (nothing to brute-force), so this function
compares it in constant time against the secret in the stack's 0600 `mlflow-auth.json`.

The MLflow server imports this module: it imports nothing but the standard library and the
flask/werkzeug the server already runs on (never `genpipe.ops.stack` or the model code), and those
only when called, so `genpipe.ops.stack` can name `FUNCTION` and `ENV_AUTH_FILE` for free.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `genpipe.ops.stack` reads the constants without flask
    from flask import Response
    from werkzeug.datastructures import Authorization

#: the server's environment names the credentials file (`genpipe.ops.stack.mlflow_server` sets it)
ENV_AUTH_FILE = "GENPIPE_MLFLOW_AUTH_FILE"
#: what the ini's `authorization_function` names
FUNCTION = f"{__name__}:authenticate"


@functools.cache
def _expected() -> tuple[bytes, bytes]:
    """(username, password) from the credentials file, read once per server process."""
    path = os.environ.get(ENV_AUTH_FILE)
    if not path:  # misconfigured: refuse everyone rather than let anyone in
        raise RuntimeError(f"{ENV_AUTH_FILE} is not set: the MLflow server cannot authenticate")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data["username"].encode(), data["password"].encode()


def _unauthorized() -> Response:
    from flask import Response

    # WWW-Authenticate makes a browser show its login prompt (the MLflow UI keeps working).
    return Response(
        "You are not authenticated: use the credentials `genpipe env` exports "
        "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).\n",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="mlflow"'},
        mimetype="text/plain",
    )


def authenticate() -> Authorization | Response:
    """The request's `Authorization: Basic` credentials if they are the stack's, else 401."""
    from flask import request

    auth = request.authorization
    if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
        return _unauthorized()
    user, password = _expected()
    # Both compared (no early exit), each in constant time.
    ok_user = hmac.compare_digest(auth.username.encode("utf-8", "replace"), user)
    ok_password = hmac.compare_digest(auth.password.encode("utf-8", "replace"), password)
    return auth if ok_user and ok_password else _unauthorized()
