"""Tests of adapters/proxy: the HTTP/1.1 exchange with the backend byte by byte (no sockets),
the forwarding-header policy, the deadlines, and the pool's slot gate."""
