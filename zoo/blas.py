"""numpy's BLAS on one thread around small matrix products.

OpenBLAS splits even small products over every core; beside TensorFlow's threads on a busy
machine its threads wait for each other, so small products ran 10-30x slower (the sample
metrics: 1.0-1.3 s vs 0.08-0.09 s per evaluation; gpt's NumPy sampling: 6 s for 200
characters under load). Values are unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


@functools.cache
def controller() -> Any:
    """The process's threadpoolctl controller (made once: it scans the loaded libraries,
    ~0.05-0.1 s after TensorFlow's import; the warm server makes it before it forks)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run numpy's BLAS on one thread inside."""
    with controller().limit(limits=1, user_api="blas"):
        yield
