"""zoo.storage.ObjectStore against the real embedded SeaweedFS."""

import uuid

from zoo.storage import ObjectStore


def test_ensure_bucket_creates_once_and_asks_once_per_store(store):
    """ingest and its publish both ensure the bucket on one store: one request, not two
    (each S3 request is a round trip of a task's fixed cost)."""
    asked = []
    real = store.client.bucket_exists

    def bucket_exists(name):
        asked.append(name)
        return real(name)

    store.client.bucket_exists = bucket_exists
    bucket = f"genpipe-test-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(bucket)
    store.ensure_bucket(bucket)
    store.ensure_bucket()
    store.ensure_bucket()
    assert asked == [bucket, store.settings.bucket]
    assert real(bucket)  # created for real
    # another store object (another task) asks again: the bucket may have gone meanwhile
    assert ObjectStore.from_env().client.bucket_exists(bucket)


def test_delete_prefix_deletes_in_one_request_and_only_the_prefix(store):
    """A prefix goes in one listing and one multi-object delete (it was one DELETE per
    object: a training task's checkpoint drop); the sibling prefix sharing its start stays."""
    base = store.uri(f"test-delete/{uuid.uuid4().hex}")
    for name in ("a/1", "a/2", "a/sub/3", "ab/4"):
        store.put_bytes(f"{base}/{name}", b"x")
    single, multi = [], []
    real_one, real_many = store.client.remove_object, store.client.remove_objects
    store.client.remove_object = lambda *a, **k: single.append(a) or real_one(*a, **k)
    store.client.remove_objects = lambda *a, **k: multi.append(a) or real_many(*a, **k)
    assert store.delete_prefix(f"{base}/a/") == 3
    assert single == [] and len(multi) == 1
    assert sorted(store.list(f"{base}/")) == [f"{base}/ab/4"]
    assert store.delete_prefix(f"{base}/a/") == 0
