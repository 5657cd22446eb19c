"""HTTPS for the web UI: the site's certificate, or a per-session self-signed one.

Browsers give the Selkies client (WebCodecs, clipboard) a secure context only over HTTPS or
on localhost, and basic-auth credentials should never cross the network in clear text. So
the web UI speaks HTTPS by default; without a site certificate the agent makes a short-lived
self-signed one on the node (key 0600 in the node-local work directory) and publishes its
SHA-256 fingerprint so users and tools can check what they connect to.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.node.address import WILDCARDS
from hpcdesk.node.errors import StartError


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    kind: str         # "site" | "self-signed"
    fingerprint: str  # SHA-256 of the DER certificate, AA:BB:...


def fingerprint(cert: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _san(names: list[str]) -> str:
    out = []
    for name in dict.fromkeys(n for n in names if n and n not in WILDCARDS):
        try:
            ipaddress.ip_address(name)
            out.append(f"IP:{name}")
        except ValueError:
            out.append(f"DNS:{name}")
    return ",".join(out) or "DNS:localhost"


def self_signed(workdir: Path, names: list[str], days: int = 8) -> TlsFiles:
    cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    cn = next((n for n in names if n), "hpcdesk")[:64]
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", str(days), "-subj", f"/CN={cn}/O=hpcdesk session",
            "-addext", f"subjectAltName={_san([*names, 'localhost', '127.0.0.1'])}",
            "-keyout", str(key), "-out", str(cert)]
    old = os.umask(0o077)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise StartError("openssl is not installed on this node, so no HTTPS certificate can "
                         "be made; install openssl or set desktop.https_cert/https_key") from None
    finally:
        os.umask(old)
    if proc.returncode != 0:
        raise StartError(f"could not make a self-signed certificate: {proc.stderr.strip()}")
    return TlsFiles(cert, key, "self-signed", fingerprint(cert))


def prepare(workdir: Path, names: list[str], site_cert: str | None,
            site_key: str | None) -> TlsFiles:
    if site_cert and site_key:
        cert, key = Path(site_cert).expanduser(), Path(site_key).expanduser()
        for p in (cert, key):
            if not os.access(p, os.R_OK):
                raise StartError(f"HTTPS file {p} is missing or unreadable on this node")
        return TlsFiles(cert, key, "site", fingerprint(cert))
    return self_signed(workdir, names)
