"""Push channel: authenticated (HMAC under the one-time key), replay-safe, no secret in it,
and best effort on the node side."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

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
