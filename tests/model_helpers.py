"""A tiny, untrained VAE model directory, as the trainer writes one: for the tests that log,
register, serve or pull a model without training one. And `in_fresh_thread`, for tests that
need Keras' per-thread global state (auto-naming counters, caches) blank."""

import threading
from pathlib import Path
from typing import Any

from zoo import models
from zoo.train import write_model_config

SPEC = {"shape": [28, 28, 1], "num_classes": 10}


def tiny_vae(tmp_path: Path, manifest: dict[str, Any] | None = None) -> tuple[Any, Path]:
    """A tiny VAE and `tmp_path`/model: its model.keras and config (the dataset `manifest`,
    default a fake fingerprint and URI)."""
    cls = models.get("vae")
    model = cls(cls.tiny_config(), SPEC)
    model.build_model()
    out = tmp_path / "model"
    out.mkdir()
    model.save(out / "model.keras")
    manifest = manifest or {"fingerprint": "f" * 64, "uri": "s3://b/m.json"}
    write_model_config(out, "vae", model.cfg, SPEC, manifest)
    return model, out


def tiny_vae_dir(tmp_path: Path, manifest: dict[str, Any] | None = None) -> Path:
    """`tiny_vae`'s model directory."""
    return tiny_vae(tmp_path, manifest)[1]


def in_fresh_thread(fn: Any) -> Any:
    """`fn()` run in a new thread, whose Keras global state starts blank; its result, or its
    exception raised here."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]
