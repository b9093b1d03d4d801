"""The embedded MLflow's auth app asks its user table once per request whether the sender is
an admin; `genpipe.ops.mlflow_auth.cache_users` keeps those reads for a few seconds, and every
write to a user through the store is seen at once (the real auth store on a temporary sqlite)."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import event

from genpipe.ops import mlflow_auth

PASSWORD = "a-long-enough-password-1"


@pytest.fixture()
def store(tmp_path):
    s = SqlAlchemyStore()
    s.init_db(f"sqlite:///{tmp_path / 'auth.db'}")
    s.create_user("admin", PASSWORD, is_admin=True)
    return s


def _count_queries(s: SqlAlchemyStore) -> list[str]:
    seen: list[str] = []
    event.listen(s.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_user_is_read_once_per_ttl(store) -> None:
    assert mlflow_auth.cache_users(store)
    queries = _count_queries(store)
    assert store.get_user("admin").is_admin
    first = len(queries)
    for _ in range(20):
        assert store.get_user("admin").is_admin
    assert first >= 1 and len(queries) == first  # the old code queried 21 times


def test_writes_through_the_store_are_seen_by_the_next_read(store) -> None:
    mlflow_auth.cache_users(store)
    assert store.get_user("admin").is_admin
    store.update_user("admin", is_admin=False)
    assert not store.get_user("admin").is_admin
    store.create_user("bob", PASSWORD)
    assert store.get_user("bob").username == "bob"
    store.delete_user("bob")
    with pytest.raises(MlflowException):
        store.get_user("bob")
    with pytest.raises(MlflowException):  # unknown users are never cached
        store.get_user("nobody")


def test_the_ttl_bounds_what_a_write_outside_the_store_leaves_stale(store) -> None:
    mlflow_auth.cache_users(store, ttl_s=0.2)
    assert store.get_user("admin").is_admin
    other = SqlAlchemyStore()  # another writer of the same database
    other.init_db(store.db_uri)
    other.update_user("admin", is_admin=False)
    time.sleep(0.25)
    assert not store.get_user("admin").is_admin


def test_a_read_overlapping_a_write_is_not_kept(store, monkeypatch) -> None:
    """A read that began before a write may hold the old user: it is returned but not cached."""
    real = store.get_user
    entered, release = threading.Event(), threading.Event()

    def slow(username):
        user = real(username)
        entered.set()
        release.wait(5)
        return user

    monkeypatch.setattr(store, "get_user", slow)
    mlflow_auth.cache_users(store)
    got = []
    reader = threading.Thread(target=lambda: got.append(store.get_user("admin")))
    reader.start()
    entered.wait(5)
    store.update_user("admin", is_admin=False)
    release.set()
    reader.join(5)
    assert got[0].is_admin  # read before the write
    assert not store.get_user("admin").is_admin  # and not kept


def test_the_server_installs_it_on_its_auth_store_once(monkeypatch, store) -> None:
    """Inside the MLflow server (which imported mlflow.server.auth and then us), the first
    authenticate() call caches the app's store."""
    import mlflow.server.auth as auth_app

    monkeypatch.setattr(auth_app, "store", store)
    before = store.get_user
    mlflow_auth._cache_server_users()
    assert store._genpipe_user_cache and store.get_user is not before
    cached = store.get_user
    mlflow_auth._cache_server_users()
    assert store.get_user is cached  # not wrapped twice
