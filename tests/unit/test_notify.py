"""Push channel: authenticated, encrypted, replay-safe, and best effort on the node side."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from hpcdesk.notify import Listener, Notifier, seal, unseal


def test_seal_roundtrip_and_tamper() -> None:
    secret = b"k" * 32
    frame = seal(secret, {"phase": "ready", "password": "hunter2"})
    assert b"hunter2" not in frame
    assert unseal(secret, frame.strip()) == {"phase": "ready", "password": "hunter2"}
    assert unseal(b"x" * 32, frame.strip()) is None
    data = json.loads(frame)
    data["c"] = data["c"][:-4] + "AAA="
    assert unseal(secret, json.dumps(data).encode()) is None
    assert unseal(secret, b"not json") is None


def test_listener_receives_events_and_rejects_forgeries(tmp_path: Path) -> None:
    listener = Listener(tmp_path, "sess1", "127.0.0.1")
    try:
        notifier = Notifier(tmp_path)
        port = json.loads((tmp_path / "notify.json").read_text())["port"]
        assert (tmp_path / "notify.json").stat().st_mode & 0o777 == 0o600
        # A forged frame (wrong key) and a replay are ignored.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(seal(b"z" * 32, {"phase": "ready", "session": "sess1", "seq": 99}))
        assert notifier.send({"phase": "launching"})
        events = listener.poll(2.0)
        assert [e["phase"] for e in events] == ["launching"]
        replay = seal(listener.secret, {"phase": "ready", "session": "sess1", "seq": 1})
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(replay)
        assert notifier.send({"phase": "ready", "connection": {"url": "u"}})
        events = listener.poll(2.0)
        assert [e["phase"] for e in events] == ["ready"]
        assert events[0]["connection"] == {"url": "u"}
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
