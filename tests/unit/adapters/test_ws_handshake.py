"""What the /ws handler reads from a handshake's scope before it accepts: the token (from the
query, an Authorization header or a bearer subprotocol entry), the resume token, and the
subprotocol it answers with."""

from __future__ import annotations

from typing import Any

from kalami_gateway.adapters.http.websocket import handshake_values


def scope(
    query: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    subprotocols: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "query_string": query,
        "headers": [(name.encode(), value.encode("latin-1")) for name, value in headers],
        "subprotocols": list(subprotocols),
    }


def test_the_query_alone_works_as_it_always_did() -> None:
    assert handshake_values(scope(b"token=a%2Bb&resume=r-1")) == ("a+b", "r-1", None)
    assert handshake_values(scope(b"")) == (None, None, None)


def test_an_authorization_header() -> None:
    headers = (("host", "gw.test"), ("authorization", "Bearer t.o.k"))
    assert handshake_values(scope(b"resume=r-1", headers)) == ("t.o.k", "r-1", None)


def test_a_bearer_subprotocol_entry_is_read_but_only_kalami_v1_is_answered() -> None:
    offered = ("kalami.v1", "bearer.t.o.k")
    assert handshake_values(scope(subprotocols=offered)) == ("t.o.k", None, "kalami.v1")
    assert handshake_values(scope(subprotocols=("bearer.t.o.k",))) == ("t.o.k", None, None)


def test_kalami_v1_with_the_query_token() -> None:
    assert handshake_values(scope(b"token=q", subprotocols=("kalami.v1",))) == (
        "q",
        None,
        "kalami.v1",
    )


def test_of_two_ways_the_query_wins() -> None:
    headers = (("authorization", "Bearer h"),)
    assert handshake_values(scope(b"token=q", headers, ("kalami.v1", "bearer.s"))) == (
        "q",
        None,
        "kalami.v1",
    )
    assert handshake_values(scope(b"", headers, ("kalami.v1", "bearer.s")))[0] == "h"


def test_a_scope_without_subprotocols() -> None:
    """ASGI servers other than uvicorn may leave the key out."""
    bare = scope(b"token=q")
    del bare["subprotocols"]
    assert handshake_values(bare) == ("q", None, None)
