"""tcp_peer: a TCP_INFO reading tells a peer that vanished from one that does not read."""

from __future__ import annotations

import socket
import struct

from kalami_gateway.adapters.server.tcp_peer import gone_quiet, silent_for


def tcp_info(retransmits: int = 0, probes: int = 0, last_ack_recv_ms: int = 0) -> bytes:
    """The first 60 bytes of a struct tcp_info as the kernel lays them out."""
    head = bytes([1, 0, retransmits, probes, 0, 0, 0, 0])
    counters = [0] * 12  # rto … last_ack_sent, last_data_recv
    return head + struct.pack("=12I", *counters) + struct.pack("=I", last_ack_recv_ms)


def test_a_peer_that_acknowledges_nothing_while_we_retransmit_is_gone() -> None:
    assert silent_for(tcp_info(retransmits=3, last_ack_recv_ms=15_000), 15.0)
    assert silent_for(tcp_info(retransmits=1, last_ack_recv_ms=40_000), 15.0)


def test_unanswered_window_probes_count_as_waiting() -> None:
    assert silent_for(tcp_info(probes=2, last_ack_recv_ms=20_000), 15.0)


def test_a_peer_that_acknowledged_recently_is_not_gone() -> None:
    assert not silent_for(tcp_info(retransmits=2, last_ack_recv_ms=14_999), 15.0)


def test_a_quiet_peer_with_nothing_of_ours_unacknowledged_is_not_gone() -> None:
    # Nothing in flight: it acknowledged everything we sent; it is only idle.
    assert not silent_for(tcp_info(last_ack_recv_ms=3_600_000), 15.0)


def test_a_short_reading_decides_nothing() -> None:
    assert not silent_for(tcp_info(retransmits=5, last_ack_recv_ms=99_000)[:40], 1.0)


class BrokenSocket:
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        raise OSError("not a TCP socket")


def test_no_socket_or_a_failing_reading_is_not_gone() -> None:
    assert not gone_quiet(None, 1.0)
    assert not gone_quiet(BrokenSocket(), 1.0)


def test_the_kernels_own_reading_of_a_live_connection_is_not_gone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            accepted.sendall(b"ping")
            assert client.recv(4) == b"ping"
            assert not gone_quiet(accepted, 0.0)
