"""Where to connect: `[user@]host[:port]` specs and ~/.ssh/config, resolved into hops.

paramiko's SSHClient never reads ssh_config, so the settings people rely on are applied
here: Host aliases, HostName, User, Port, IdentityFile, IdentitiesOnly, UserKnownHostsFile,
HostKeyAlias, ProxyCommand and ProxyJump (each jump host resolved with its own settings).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko

from hpcdesk.errors import UsageError

DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_JUMPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way to the login node, with the settings that apply to it."""

    name: str                       # as the user wrote it (a Host alias or an address)
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = DEFAULT_KNOWN_HOSTS + GLOBAL_KNOWN_HOSTS
    host_key_alias: str | None = None
    proxy_command: str | None = None
    use_agent: bool = True

    def describe(self) -> str:
        where = self.hostname if self.port == 22 else f"{self.hostname} port {self.port}"
        return f"{self.user}@{where}" + (f" ({self.name})" if self.name != self.hostname else "")


@dataclass(frozen=True)
class Spec:
    user: str | None
    host: str
    port: int | None


def parse_spec(text: str) -> Spec:
    """`[user@]host[:port]`, `[user@][v6addr]:port` or `ssh://[user@]host[:port]`."""
    raw = text.strip()
    if raw.startswith("ssh://"):
        raw = raw[len("ssh://"):].rstrip("/")
    user, _, hostport = raw.rpartition("@")
    port: str | None = None
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad_spec(text)
        port = rest[1:] or None
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host = hostport
    if not host or any(c.isspace() for c in raw) or host.startswith("-"):
        raise _bad_spec(text)
    number = None
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad_spec(text)
        number = int(port)
    return Spec(user or None, host, number)


def _bad_spec(text: str) -> UsageError:
    return UsageError(f"{text!r} is not a host: expected [USER@]HOST[:PORT] or a Host alias "
                      "from ~/.ssh/config")


def load_config(path: Path | None) -> paramiko.SSHConfig:
    """The user's ssh config (`-F PATH`, else ~/.ssh/config); none at all is fine."""
    explicit = path is not None
    file = path if path is not None else Path("~/.ssh/config").expanduser()
    if not file.exists():
        if explicit:
            raise UsageError(f"ssh config file {file} does not exist")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read ssh config {file}: {exc}") from None
    except Exception as exc:  # paramiko raises ConfigParseError and ValueError on bad lines
        raise UsageError(f"ssh config {file} has an error: {exc}",
                         hint="`ssh -G HOST` shows how OpenSSH reads it") from None


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "true")


def resolve(text: str, config: paramiko.SSHConfig) -> tuple[Hop, list[str]]:
    """The hop for one spec, and the jump specs its config asks for (ProxyJump)."""
    spec = parse_spec(text)
    try:
        opts = config.lookup(spec.host)
    except Exception as exc:  # a Match exec that fails, a bad token: paramiko raises many kinds
        raise UsageError(f"ssh config for {spec.host!r}: {exc}") from None
    port_text = str(spec.port or opts.get("port", "22"))
    if not port_text.isdigit():
        raise UsageError(f"ssh config for {spec.host!r}: Port {port_text!r} is not a number")
    files = tuple(os.path.expanduser(f) for f in opts.get("identityfile", []))
    known = opts.get("userknownhostsfile")
    global_known = opts.get("globalknownhostsfile")
    user_files = tuple(known.split()) if known else DEFAULT_KNOWN_HOSTS
    global_files = tuple(global_known.split()) if global_known else GLOBAL_KNOWN_HOSTS
    jump = opts.get("proxyjump")
    jumps = [] if not jump or jump.lower() == "none" else [j.strip() for j in jump.split(",")]
    proxy = opts.get("proxycommand")
    agent = (opts.get("identityagent") or "").lower() != "none"
    hop = Hop(
        name=spec.host, hostname=opts.get("hostname", spec.host), port=int(port_text),
        user=spec.user or opts.get("user") or getpass.getuser(), identity_files=files,
        identities_only=_yes(opts.get("identitiesonly")),
        known_hosts_files=tuple(os.path.expanduser(f) for f in (*user_files, *global_files)),
        host_key_alias=opts.get("hostkeyalias"),
        proxy_command=None if jumps or not proxy or proxy.lower() == "none" else proxy,
        use_agent=agent,
    )
    return hop, jumps


def route(login: str, jump: str | None, config: paramiko.SSHConfig, _depth: int = 0
          ) -> list[Hop]:
    """Every hop from this computer to the login node, first one first.

    `jump` (like `ssh -J`, comma-separated) replaces the login host's own ProxyJump; each jump
    host may have a ProxyJump of its own in the config, as with OpenSSH.
    """
    if _depth > MAX_JUMPS:
        raise UsageError(f"more than {MAX_JUMPS} jump hosts on the way to {login} (is there a "
                         "ProxyJump loop in your ssh config?)")
    target, configured = resolve(login, config)
    jumps = [j.strip() for j in jump.split(",") if j.strip()] if jump else configured
    hops: list[Hop] = []
    for spec in jumps:
        hops.extend(route(spec, None, config, _depth + 1))
    if hops and target.proxy_command:
        target = replace(target, proxy_command=None)  # ProxyJump wins, as in OpenSSH
    return [*hops, target]
