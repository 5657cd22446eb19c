"""Viewers: established connections to the web port, read from /proc/net (real sockets)."""

from __future__ import annotations

import socket

from hpcdesk.node.viewers import connected


def test_established_connections_to_the_port_are_counted() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        assert connected(port) == 0  # listening is not a viewer
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = server.accept()
        assert connected(port) == 1
        other = socket.create_server(("127.0.0.1", 0))
        assert connected(other.getsockname()[1]) == 0
        other.close()
        client.close()
        peer.close()
        assert connected(port) == 0
    finally:
        server.close()
