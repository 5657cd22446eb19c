"""Push channel: authenticated (HMAC under the one-time key), replay-safe, no secret in it,
and best effort on the node side."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from hpcdesk.notify import Listener, Notifier, sign, verify


def test_sign_verify_and_tamper() -> None:
    secret = b"k" * 32
    frame = sign(secret, {"phase": "ready", "seq": 3})
    assert verify(secret, frame.strip()) == {"phase": "ready", "seq": 3}
    assert verify(b"x" * 32, frame.strip()) is None  # another key
    data = json.loads(frame)
    tampered = dict(data, e=data["e"].replace('"seq": 3', '"seq": 4'))
    assert tampered["e"] != data["e"]
    assert verify(secret, json.dumps(tampered).encode()) is None  # changed event
    bad_tag = dict(data, m="0" * 64)
    assert verify(secret, json.dumps(bad_tag).encode()) is None
    assert verify(secret, b"not json") is None
    assert verify(secret, b'{"e": 1}') is None


def _send_raw(port: int, frame: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(frame)


def test_listener_rejects_forged_tampered_and_replayed_events(tmp_path: Path) -> None:
    listener = Listener(tmp_path, "sess1", "127.0.0.1")
    try:
        notifier = Notifier(tmp_path)
        port = json.loads((tmp_path / "notify.json").read_text())["port"]
        assert (tmp_path / "notify.json").stat().st_mode & 0o777 == 0o600
        # A forged frame (wrong key) is ignored; a real one arrives.
        _send_raw(port, sign(b"z" * 32, {"phase": "ready", "session": "sess1", "seq": 99}))
        assert notifier.send({"phase": "launching"})
        assert [e["phase"] for e in listener.poll(2.0)] == ["launching"]
        # A genuine frame is accepted once; the same bytes again are a replay.
        genuine = sign(listener.secret, {"phase": "waiting", "session": "sess1", "seq": 2})
        _send_raw(port, genuine)
        assert [e["phase"] for e in listener.poll(2.0)] == ["waiting"]
        _send_raw(port, genuine)
        # A tampered copy (another phase, the old tag) and another session's event: ignored.
        frame = json.loads(genuine)
        _send_raw(port, json.dumps(dict(frame, e=frame["e"].replace("waiting", "ready")))
                  .encode() + b"\n")
        _send_raw(port, sign(listener.secret, {"phase": "ready", "session": "other", "seq": 9}))
        notifier.seq = 2
        assert notifier.send({"phase": "ready"})
        events = listener.poll(2.0)
        assert [(e["phase"], e["seq"]) for e in events] == [("ready", 3)]
    finally:
        listener.close()
    assert not (tmp_path / "notify.json").exists()


def test_notifier_without_listener_is_silent(tmp_path: Path) -> None:
    assert Notifier(tmp_path).send({"phase": "x"}) is False
    listener = Listener(tmp_path, "s", "127.0.0.1")
    notifier = Notifier(tmp_path)
    listener.close()
    (tmp_path / "notify.json").write_text(json.dumps(notifier.target))
    assert notifier.send({"phase": "x"}) is False
    assert notifier.disabled


def test_many_senders_at_once(tmp_path: Path) -> None:
    listener = Listener(tmp_path, "s", "127.0.0.1")
    notifier = Notifier(tmp_path)
    lock = threading.Lock()

    def send() -> None:
        with lock:  # sequence numbers are per agent; one agent sends in order
            notifier.send({"phase": "p"})

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got: list[dict[str, object]] = []
    for _ in range(20):
        got += listener.poll(0.2)
        if len(got) >= 10:
            break
    listener.close()
    assert 1 <= len(got) <= 10  # out-of-order arrivals are dropped as replays, never duplicated
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs)


def _wait_for_event(listener: Listener, deadline_s: float = 20.0) -> list[dict[str, object]]:
    import time

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        events = listener.poll(0.5)
        if events:
            return events
    return []


@pytest.mark.reliability("D6 push listener under abuse",
                          "EMFILE and silent connections handled; real events still arrive")
def test_listener_survives_running_out_of_file_descriptors(tmp_path: Path) -> None:
    """accept() failing with EMFILE is not a traceback; the listener recovers afterwards."""
    import os
    import resource

    listener = Listener(tmp_path, "sess1", "127.0.0.1")
    port = json.loads((tmp_path / "notify.json").read_text())["port"]
    clients = [socket.socket() for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
        while (fd := os.open(os.devnull, os.O_RDONLY)) < limit:
            fillers.append(fd)  # every descriptor number below the limit is now in use
        os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        for c in clients:
            c.connect(("127.0.0.1", port))  # queued in the backlog: accept() needs a new fd
        assert listener.poll(1.0) == []     # EMFILE inside: no exception
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
        for c in clients:
            c.close()
    try:
        assert Notifier(tmp_path).send({"phase": "ready", "node": "n1"})
        events = _wait_for_event(listener)
        assert [e["phase"] for e in events] == ["ready"]
    finally:
        listener.close()


@pytest.mark.reliability("D6 push listener under abuse",
                          "EMFILE and silent connections handled; real events still arrive")
def test_silent_connections_are_limited_and_timed_out(tmp_path: Path) -> None:
    listener = Listener(tmp_path, "sess1", "127.0.0.1")
    listener.max_connections = 4
    listener.idle_timeout = 0.5
    port = json.loads((tmp_path / "notify.json").read_text())["port"]
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    most = 0
    events: list[dict[str, object]] = []
    stop = threading.Event()

    def serve() -> None:  # the waiting client's loop
        nonlocal most
        while not stop.is_set():
            events.extend(listener.poll(0.1))
            most = max(most, len(listener.conns))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for s in silent:  # every silent connection is closed by the listener in time
            s.settimeout(20)
            assert s.recv(1) == b""
        assert most <= 4
        assert Notifier(tmp_path).send({"phase": "ready", "node": "n1"})
    finally:
        stop.set()
        thread.join(10)
        for s in silent:
            s.close()
        events.extend(listener.poll(1.0))
        listener.close()
    assert [e["phase"] for e in events] == ["ready"]


def test_junk_with_a_non_ascii_tag_and_a_thousand_bad_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19 row 5: a non-ASCII tag made hmac.compare_digest raise TypeError (the waiting
    submit died with a traceback), and each of 1,004 bad lines printed a warning."""
    assert verify(b"k" * 32, json.dumps({"e": "{}", "m": "\u00e9" * 64}).encode()) is None
    listener = Listener(tmp_path, "sess1", "127.0.0.1")
    notifier = Notifier(tmp_path)
    junk = json.dumps({"e": "{}", "m": "\u00e9\u00e9"}).encode() + b"\n"
    with caplog.at_level("WARNING", logger="hpcdesk.notify"):
        with socket.create_connection(("127.0.0.1", listener.sock.getsockname()[1])) as s:
            s.sendall(junk * 4 + b"garbage\n" * 1000)
        events = []
        deadline = 50
        while deadline and listener.rejected < 1004:
            events += listener.poll(0.1)
            deadline -= 1
        assert notifier.send({"phase": "ready"})
        while not events and deadline:
            events += listener.poll(0.1)
            deadline -= 1
        listener.close()
    assert listener.rejected == 1004
    assert [e["phase"] for e in events] == ["ready"]  # the agent's event still gets through
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1004" in warnings[0].getMessage()
