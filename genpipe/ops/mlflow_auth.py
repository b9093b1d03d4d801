"""Cheap authentication for the embedded MLflow server (`genpipe.ops.stack`), loaded BY that server.

MLflow's basic-auth app (`mlflow server --app-name basic-auth`) calls the ini's
`authorization_function` on every request. Its default checks the password against a
werkzeug scrypt hash in the auth database: ~0.6 s of CPU per request. The stack's password is
a 256-bit random token, which needs no slow hash (nothing to brute-force), so this function
compares it in constant time against the secret in the stack's 0600 `mlflow-auth.json`.

The auth app also asks its database, on every request, whether the sender is an admin
(`sender_is_admin`: one SQLAlchemy query, ~0.7-1.4 ms of a 3-10 ms request). The first
`authenticate` call therefore puts a small cache in front of the auth store's `get_user`
(`cache_users`): a user read is kept for `USER_TTL_S`, and every write to a user through the store
(create, update, delete) empties the cache, so a change made through the server is seen by the
next request. Authentication itself (above) still checks every request's credentials.

The MLflow server imports this module: it imports nothing but the standard library and the
flask/werkzeug the server already runs on (never `genpipe.ops.stack` or the model code), and those
only when called, so `genpipe.ops.stack` can name `FUNCTION` and `ENV_AUTH_FILE` for free.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `genpipe.ops.stack` reads the constants without flask
    from flask import Response
    from werkzeug.datastructures import Authorization

#: the server's environment names the credentials file (`genpipe.ops.stack.mlflow_server` sets it)
ENV_AUTH_FILE = "GENPIPE_MLFLOW_AUTH_FILE"
#: what the ini's `authorization_function` names
FUNCTION = f"{__name__}:authenticate"
#: how long a user read from the auth store is reused (a bound for writes that bypass the
#: store's methods, e.g. another process editing the database; the store's own writes clear it)
USER_TTL_S = 5.0
#: the auth store's methods that change a user (what `get_user` returns)
_USER_WRITES = ("create_user", "update_user", "delete_user")


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


def cache_users(store: Any, ttl_s: float = USER_TTL_S) -> bool:
    """Put a cache in front of `store.get_user` (MLflow's auth SqlAlchemyStore): a user read is
    reused for `ttl_s` seconds; any of `_USER_WRITES` through the store empties it, also for
    reads that were under way (a generation count: a read started before a write is not kept).
    Returns False when the store lacks one of those methods (another MLflow): left as it is."""
    if getattr(store, "_genpipe_user_cache", False):
        return True
    if not all(callable(getattr(store, n, None)) for n in ("get_user", *_USER_WRITES)):
        return False
    lock = threading.Lock()
    cache: dict[str, tuple[float, Any]] = {}
    generation = [0]
    read = store.get_user

    def get_user(username: str) -> Any:
        now = time.monotonic()
        with lock:
            hit = cache.get(username)
            started = generation[0]
        if hit is not None and now - hit[0] < ttl_s:
            return hit[1]
        user = read(username)  # an unknown user raises, and nothing is kept
        with lock:
            if generation[0] == started:
                cache[username] = (now, user)
        return user

    def clearing(write: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(write)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return write(*args, **kwargs)
            finally:
                with lock:
                    generation[0] += 1
                    cache.clear()

        return wrapper

    for name in _USER_WRITES:
        setattr(store, name, clearing(getattr(store, name)))
    store.get_user = get_user
    store._genpipe_user_cache = True
    return True


_installed = threading.Lock()


def _cache_server_users() -> None:
    """`cache_users` on the running auth app's store, once (we run inside it: it imported us)."""
    auth_app = sys.modules.get("mlflow.server.auth")
    store = getattr(auth_app, "store", None)
    if store is None or getattr(store, "_genpipe_user_cache", False):
        return
    with _installed:
        cache_users(store)


def authenticate() -> Authorization | Response:
    """The request's `Authorization: Basic` credentials if they are the stack's, else 401."""
    from flask import request

    _cache_server_users()
    auth = request.authorization
    if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
        return _unauthorized()
    user, password = _expected()
    # Both compared (no early exit), each in constant time.
    ok_user = hmac.compare_digest(auth.username.encode("utf-8", "replace"), user)
    ok_password = hmac.compare_digest(auth.password.encode("utf-8", "replace"), password)
    return auth if ok_user and ok_password else _unauthorized()
