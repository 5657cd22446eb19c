"""Host keys: checked against known_hosts, never accepted silently.

An unknown key is refused with its fingerprint and how to add it after checking; a changed
key is refused with both fingerprints and how to remove the old one. The key types already
known for a host are the only ones offered in the handshake, as OpenSSH does, so a server
with several keys is checked against the one the user has.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field

import paramiko

from hpcdesk.errors import UsageError
from hpcdesk.laptop.target import Hop


class HostKeyRefused(UsageError):
    """The server's host key is unknown or differs from known_hosts."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:<base64 without padding>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def lookup_name(hop: Hop) -> str:
    """The name a host has in known_hosts: HostKeyAlias, host, or [host]:port."""
    if hop.host_key_alias:
        return hop.host_key_alias
    return hop.hostname if hop.port == 22 else f"[{hop.hostname}]:{hop.port}"


@dataclass
class KnownHosts:
    hop: Hop
    keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    files: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, hop: Hop) -> KnownHosts:
        known = cls(hop)
        for name in hop.known_hosts_files:
            path = os.path.expanduser(name)
            if not os.path.isfile(path):
                continue
            try:
                known.keys.load(path)
            except (OSError, UnicodeDecodeError, paramiko.SSHException) as exc:
                raise UsageError(f"cannot read known hosts file {path}: {exc}") from None
            known.files.append(path)
        return known

    def for_host(self) -> dict[str, paramiko.PKey]:
        entry = self.keys.lookup(lookup_name(self.hop))
        return dict(entry) if entry else {}

    def key_types(self) -> list[str]:
        """Host key algorithms to offer: those known for this host, else paramiko's own."""
        known = self.for_host()
        if not known:
            return []
        types = []
        for name in known:
            # An RSA key is verified with any of the RSA signature algorithms.
            types.extend(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if name == "ssh-rsa"
                         else [name])
        return types

    def verify(self, key: paramiko.PKey) -> None:
        hop, name = self.hop, lookup_name(self.hop)
        known = self.for_host()
        offered = f"{key.get_name()} {fingerprint(key)}"
        where = ", ".join(self.files) or os.path.expanduser(hop.known_hosts_files[0])
        if not known:
            port = "" if hop.port == 22 else f"-p {hop.port} "
            raise HostKeyRefused(
                f"the host key of {hop.describe()} is not known, so the connection was "
                f"refused: the server offers {offered} (not in {where})",
                hint=f"check this fingerprint with your site (their documentation or "
                     f"helpdesk); then add the key, e.g. by running `ssh {port}{hop.user}@"
                     f"{hop.hostname}` once and answering yes, and run hpcdesk tunnel again")
        same = known.get(key.get_name())
        if same is not None and same.asbytes() == key.asbytes():
            return
        old = ", ".join(f"{t} {fingerprint(k)}" for t, k in known.items())
        raise HostKeyRefused(
            f"the host key of {hop.describe()} has CHANGED: the server offers {offered}, "
            f"but {where} has {old} for {name}. Someone may be intercepting the connection, "
            "or the server's key was replaced; the connection was refused",
            hint=f"ask your site whether the key changed; only if it did, remove the old key "
                 f"with `ssh-keygen -R '{name}'` and connect again to add the new one")
