"""Free TCP ports on 127.0.0.1 for servers started on this machine (library, no servers here).

The one port picker: the embedded stack's throw-away instances (`genpipe.ops.stack.free_ports`,
each port + 10000 for SeaweedFS's gRPC) and local TF_CONFIG workers (`zoo.tfconfig.free_ports`).

Ports are drawn at random BELOW Linux's ephemeral range (32768+): the kernel hands ports of
that range to outgoing connections (S3, MLflow clients), which could take a port between this
check and the server's bind; asking the kernel for a free port (bind to 0) returns exactly such
a port. A free port may still be taken before the server binds it (no picker can hold it for
another process); the random draw makes two pickers unlikely to agree.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence

HOST = "127.0.0.1"
#: default range: below the ephemeral range even with SeaweedFS's + 10000 gRPC ports
LOW, HIGH = 15000, 22000


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could bind `port` on `host` now (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT (by a server that stopped) is reusable, a
        # listening socket is not; servers bind with it too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(
    n: int, low: int = LOW, high: int = HIGH, offsets: Sequence[int] = (0,), gap: int = 1
) -> list[int]:
    """n distinct ports p in [low, high) with every p + offset free now.

    The ports p + offset of different picks are at least `gap` apart (a server that also binds
    port + 1 needs gap 2).
    """
    if not 0 < low < high <= 65536 - max(offsets) or n > (high - low) // gap:
        raise ValueError(f"cannot pick {n} ports in [{low}, {high}) with offsets {list(offsets)}")
    rng = random.SystemRandom()
    chosen: list[int] = []
    taken: list[int] = []  # every chosen port + offset
    for _ in range(100 * (high - low)):  # not forever when the range is full
        if len(chosen) == n:
            return chosen
        port = rng.randrange(low, high)
        mine = [port + o for o in offsets]
        if any(abs(p - t) < gap for p in mine for t in taken):
            continue
        if all(port_free(p) for p in mine):
            chosen.append(port)
            taken += mine
    if len(chosen) == n:
        return chosen
    raise OSError(f"found only {len(chosen)} of {n} free ports in [{low}, {high}) on {HOST}")
