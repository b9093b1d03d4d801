"""Round trips to MLflow: how many requests of a block wait on one another.

`with mlflow_rounds() as rounds:` holds each request of this process to the stack's MLflow
for `delay` seconds first, so requests sent together surely overlap; `rounds.depth` is then
the longest chain of requests each started after the previous one ended (requests sent at
once count once), `rounds.count` all of them. Needs the stack (its settings in the env).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Rounds:
    #: (start, end, "METHOD last-path-part") of each request
    spans: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.spans)

    @property
    def depth(self) -> int:
        ordered = sorted(self.spans)
        depths: list[int] = []
        for start, _, _ in ordered:
            before = [d for (_, end, _), d in zip(ordered, depths, strict=False) if end <= start]
            depths.append(1 + max(before, default=0))
        return max(depths, default=0)

    def chain(self) -> list[str]:
        """The requests in start order, for an assertion message."""
        return [name for _, _, name in sorted(self.spans)]


@contextmanager
def mlflow_rounds(delay: float = 0.3) -> Iterator[Rounds]:
    import requests

    from zoo.settings import Settings

    uri = Settings.from_env().mlflow_uri.rstrip("/")
    rounds = Rounds()
    lock = threading.Lock()
    real = requests.Session.request

    def request(self, method, url, *args, **kwargs):
        if not str(url).startswith(uri):
            return real(self, method, url, *args, **kwargs)
        start = time.monotonic()
        time.sleep(delay)
        try:
            return real(self, method, url, *args, **kwargs)
        finally:
            name = f"{method} {str(url).split('?')[0].rsplit('/', 1)[-1]}"
            with lock:
                rounds.spans.append((start, time.monotonic(), name))

    requests.Session.request = request
    try:
        yield rounds
    finally:
        requests.Session.request = real
