"""The data layer: load a source, validate, split, fingerprint, publish to S3, fetch, read.

    raw = load_source("idx:/data/mnist")            # validated RawImages | RawText
    manifest = publish(split(raw), store, source="idx:/data/mnist")
    local = fetch(manifest["uri"], store, cache_dir)
    ds = image_dataset(local, "train", batch_size=128, seed=0)

Modules: raw (RawImages/RawText), sources (+ idx, npz, text, s3: one loader per kind),
validate, splits (split + fingerprint), manifest (the published format), publishing,
fetching (LocalDataset), reader. Importing this package does not import TensorFlow; the
functions that need it do so lazily.
"""

from zoo.data.fetching import LocalDataset, fetch
from zoo.data.manifest import FORMAT, check_manifest
from zoo.data.publishing import publish
from zoo.data.raw import RawImages, RawText
from zoo.data.reader import image_dataset, load_split_arrays, text_split
from zoo.data.sources import load_source
from zoo.data.splits import fingerprint, split
from zoo.data.validate import validate

__all__ = [
    "FORMAT",
    "LocalDataset",
    "RawImages",
    "RawText",
    "check_manifest",
    "fetch",
    "fingerprint",
    "image_dataset",
    "load_source",
    "load_split_arrays",
    "publish",
    "split",
    "text_split",
    "validate",
]
