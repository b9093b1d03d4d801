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
