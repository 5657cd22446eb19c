"""The node's self-signed certificate also names localhost and 127.0.0.1, so a browser at the
laptop end of `hpcdesk tunnel` warns about the issuer only, not the name."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tooling import require

from hpcdesk.node import tls


def test_self_signed_certificate_names_the_node_and_the_tunnel_end(tmp_path: Path) -> None:
    require("openssl", package="openssl")
    files = tls.self_signed(tmp_path, ["gpu01.cluster", "10.77.0.11"])
    text = subprocess.run(["openssl", "x509", "-in", str(files.cert), "-noout", "-ext",
                           "subjectAltName"], capture_output=True, text=True, check=True).stdout
    for name in ("DNS:gpu01.cluster", "IP Address:10.77.0.11", "DNS:localhost",
                 "IP Address:127.0.0.1"):
        assert name in text
    assert (files.key.stat().st_mode & 0o777) == 0o600
