"""zoo.ports: the one free-port picker (test stacks, local TF workers)."""

from __future__ import annotations

import socket

import pytest

from zoo import ports, tfconfig


def _listen() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for port in range(ports.LOW, ports.HIGH):
        if not (ports.port_free(port + 1) and ports.port_free(port + 2)):
            continue
        try:
            s.bind((ports.HOST, port))
        except OSError:
            continue
        s.listen()
        return s
    raise AssertionError("no free port to listen on")


def test_a_listening_port_is_not_free_and_is_never_picked() -> None:
    with _listen() as s:
        held = s.getsockname()[1]
        assert not ports.port_free(held)
        # only `held` and `held + 1` in range: the picker must skip the held one
        assert ports.free_ports(1, held, held + 2) == [held + 1]
        # nor as port + offset: held - 1 and held would need it
        assert ports.free_ports(1, held - 1, held + 2, offsets=(0, 1)) == [held + 1]
        with pytest.raises(OSError, match=f"found only 0 of 1 free ports in \\[{held}, "):
            ports.free_ports(1, held, held + 1)


def test_picks_are_distinct_free_and_below_the_ephemeral_range() -> None:
    picked = ports.free_ports(5, offsets=(0, 10000), gap=2)
    assert len(picked) == 5
    every = sorted(p + o for p in picked for o in (0, 10000))
    assert all(b - a >= 2 for a, b in zip(every, every[1:], strict=False))
    assert all(ports.LOW <= p < ports.HIGH and ports.port_free(p) for p in every[:5])
    assert max(every) < 32768
    workers = tfconfig.free_ports(3)
    assert len(set(workers)) == 3 and all(ports.port_free(p) for p in workers)


def test_an_impossible_request_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot pick 3 ports in \\[15000, 15002\\)"):
        ports.free_ports(3, 15000, 15002)
