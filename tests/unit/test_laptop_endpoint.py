"""The laptop reads the desktop's connection.json through `Connection`, as every other reader
does: from the login node's `status --json`, which carries it typed (`connection`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk.connection import Connection
from hpcdesk.laptop.endpoint import Endpoint
from hpcdesk.login.status import SessionStatus
from hpcdesk.session import Session

TOKEN = Connection(session="s1", url="https://10.0.0.11:40001/desk/", host="10.0.0.11",
                   port=40001, path="/desk/", auth="token", token="t0k", node="gpu01",
                   transport="webrtc", turn_port=40123, tls="self-signed",
                   tls_fingerprint="AB:CD")
BASIC = Connection(session="s1", url="https://10.0.0.11:40001/", host="10.0.0.11", port=40001,
                   auth="basic", user="alice", password="s3cret", node="gpu01")


def status_json(tmp_path: Path, conn: Connection) -> dict[str, object]:
    """What the login node's `hpcdesk status ID --json` prints for a ready desktop."""
    session = Session(tmp_path / conn.session)
    session.dir.mkdir()
    conn.write(session.path("connection.json"))
    node_json = {"node": conn.node}  # what the agent wrote to node.json
    return SessionStatus(session, "ready", "", None, node_json).as_json(with_secrets=True)


@pytest.mark.parametrize("conn", [TOKEN, BASIC], ids=["token", "basic"])
def test_the_tunnel_forwards_what_connection_json_says(tmp_path: Path, conn: Connection) -> None:
    data = status_json(tmp_path, conn)
    assert Connection.from_dict(data["connection"]) == conn  # type: ignore[arg-type]
    end = Endpoint.from_status(data)
    assert (end.host, end.port, end.node, end.transport) == (
        conn.host, conn.port, conn.node, conn.transport)
    assert (end.user, end.password) == (conn.user or "", conn.password or "")
    assert end.turn_port == conn.turn_port and end.tls_fingerprint == conn.tls_fingerprint
    # The browser's link through the tunnel: the token once, in the fragment; no password.
    assert end.local_url(5555) == conn.browser_link().replace(f"{conn.host}:{conn.port}",
                                                             "127.0.0.1:5555")
    assert end.local_url(5555).count("#token=") == (1 if conn.token else 0)


@pytest.mark.parametrize("conn", [TOKEN, BASIC], ids=["token", "basic"])
def test_an_older_login_node_without_the_typed_connection_still_works(
        tmp_path: Path, conn: Connection) -> None:
    """A login node whose hpcdesk predates `connection` prints the flat keys only, its `url`
    already the browser's link: the same endpoint."""
    data = status_json(tmp_path, conn)
    flat = {k: v for k, v in data.items() if k != "connection"}
    assert Endpoint.from_status(flat) == Endpoint.from_status(data)


def test_no_url_is_a_clear_error(tmp_path: Path) -> None:
    from hpcdesk.errors import Unreachable

    with pytest.raises(Unreachable, match="gave no URL for session s9"):
        Endpoint.from_status({"session": "s9", "state": "starting"})
