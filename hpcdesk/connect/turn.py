"""The site's TURN server: its secret and credential files, the credentials the node derives
from them, and the site's TURN REST service.

Three auth methods, exactly one per site (`turn.*` keys, site file only):
- shared secret (coturn `use-auth-secret` / `static-auth-secret`): the agent reads the secret
  file and mints time-limited credentials, username `<expiry>:<user>` and password
  base64(HMAC-SHA1(secret, username)), valid for the job's time limit plus a margin. Only
  they reach Selkies and the browser; the secret stays inside the agent process.
- long-term credentials: one line USER:PASSWORD in a file, handed to the browser as they are.
- REST URI: the site's service answers credentials (the TURN REST API draft's
  `{username, password, ttl, uris}` or an RTCConfiguration `{iceServers: [...]}`).

A secret or credential file that is missing, unreadable or writable by group or others is a
configuration error naming the key (exit 2 at submit): whoever can write it decides which
credentials the browsers get.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hpcdesk.errors import ConfigError
from hpcdesk.schema import TurnConfig

AuthMethod = Literal["secret", "long-term", "rest"]
AUTH_KEYS: dict[str, AuthMethod] = {
    "turn.secret_file": "secret", "turn.credentials_file": "long-term", "turn.rest_uri": "rest",
}
# Credentials outlive the job's time limit by this much (clock skew, the time-limit grace).
LIFETIME_MARGIN = 3600


class TurnError(RuntimeError):
    """The TURN REST service gave no usable answer."""


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer entry as the browser's RTCPeerConnection takes it."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None and self.credential is not None:
            out.update(username=self.username, credential=self.credential)
        return out


def _set_keys(turn: TurnConfig) -> list[str]:
    return [k for k in AUTH_KEYS if getattr(turn, k.split(".")[1])]


def auth_method(turn: TurnConfig) -> AuthMethod | None:
    keys = _set_keys(turn)
    return AUTH_KEYS[keys[0]] if keys else None


def configured(turn: TurnConfig) -> bool:
    """True if the site named a TURN server (or a REST service that names one)."""
    return bool(turn.host or turn.rest_uri)


def config_problems(turn: TurnConfig) -> list[tuple[str, str]]:
    """(key, message) for every inconsistency in the turn section (files are not read here)."""
    keys = _set_keys(turn)
    out: list[tuple[str, str]] = []
    if len(keys) > 1:
        out.append((keys[1], f"two TURN auth methods ({' and '.join(keys)}): set exactly one of "
                             + ", ".join(AUTH_KEYS)))
    if turn.host and not keys:
        out.append(("turn.host", "needs an auth method: set one of " + ", ".join(AUTH_KEYS)))
    if not turn.host and keys and keys[0] != "turn.rest_uri":
        out.append((keys[0], "needs turn.host (the TURN server these credentials are for)"))
    if turn.tls and turn.host and _is_ip(turn.host):
        out.append(("turn.tls", f"TLS needs a host name that the server's certificate names, "
                                f"not the address {turn.host}"))
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def read_protected_file(path: str, key: str) -> str:
    """The first line of a site secret file; ConfigError (naming `key`) unless it is safe."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist",
                          hint="create it owned by root with a group of the users who may "
                          "relay, mode 0640 (never world-readable), or fix the path"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {path} is not a regular file")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{key}: {path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod go-w {path}: whoever can write it chooses the browsers' TURN credentials")
    if st.st_mode & stat.S_IROTH:
        raise ConfigError(
            f"{key}: {path} is world-readable (mode {stat.S_IMODE(st.st_mode):04o}): every "
            "account on the cluster could mint credentials for the site's TURN server",
            hint=f"chown root:GROUP {path} && chmod 0640 {path}, GROUP being the users who may "
            "relay (the desktop's agent reads it as the user)")
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}",
                          hint="the desktop's user must be able to read it on the compute nodes"
                          ) from None
    if not line:
        raise ConfigError(f"{key}: {path} is empty")
    return line


def check_files(turn: TurnConfig, sources: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for a bad secret or credential file (at submit and on the node);
    `sources` (key -> the layer that set it) prefixes the message with the file to fix."""
    try:
        if turn.secret_file:
            read_protected_file(turn.secret_file, "turn.secret_file")
        if turn.credentials_file:
            _long_term(turn.credentials_file)
    except ConfigError as exc:
        key = exc.message.split(":", 1)[0]
        if sources and key in sources:
            raise ConfigError(f"{sources[key]}: {exc.message}", hint=exc.hint) from None
        raise


def _long_term(path: str) -> tuple[str, str]:
    line = read_protected_file(path, "turn.credentials_file")
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"turn.credentials_file: {path} must hold one line USER:PASSWORD")
    return user, password


def hmac_credentials(secret: str, name: str, lifetime: int, now: float) -> tuple[str, str]:
    """coturn REST credentials: (`<expiry>:<name>`, base64(HMAC-SHA1(secret, username)))."""
    username = f"{int(now) + lifetime}:{name.replace(':', '-')}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def server_url(host: str, port: int, protocol: str, tls: bool) -> str:
    """An ICE URL: `turn:HOST:PORT?transport=udp`, `turns:` with TLS, IPv6 in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'turns' if tls else 'turn'}:{host}:{port}?transport={protocol}"


def site_servers(turn: TurnConfig, user: str, lifetime: int,
                 now: float) -> tuple[list[IceServer], int | None]:
    """The site's TURN server with fresh credentials, and seconds until they must be renewed
    (None: they last for `lifetime`). Raises ConfigError or TurnError."""
    method = auth_method(turn)
    if method == "rest":
        assert turn.rest_uri is not None
        return fetch_rest(turn.rest_uri, user, turn.protocol, turn.tls)
    assert turn.host is not None
    url = server_url(turn.host, turn.port, turn.protocol, turn.tls)
    if method == "secret":
        assert turn.secret_file is not None
        secret = read_protected_file(turn.secret_file, "turn.secret_file")
        name, password = hmac_credentials(secret, user, lifetime + LIFETIME_MARGIN, now)
        return [IceServer((url,), name, password)], None
    if method == "long-term":
        assert turn.credentials_file is not None
        name, password = _long_term(turn.credentials_file)
        return [IceServer((url,), name, password)], None
    raise ConfigError("turn.host: needs an auth method: set one of " + ", ".join(AUTH_KEYS))


def fetch_rest(uri: str, user: str, protocol: str, tls: bool,
               timeout: float = 15.0) -> tuple[list[IceServer], int | None]:
    """Ask the site's TURN REST service for credentials; (servers, seconds until renewal)."""
    import urllib.error  # only on the node, and only for REST sites
    import urllib.parse
    import urllib.request

    sep = "&" if urllib.parse.urlsplit(uri).query else "?"
    url = f"{uri}{sep}" + urllib.parse.urlencode({"service": "turn", "username": user})
    req = urllib.request.Request(url, headers={  # noqa: S310 - http(s) only (schema pattern)
        "x-auth-user": user, "x-turn-protocol": protocol, "x-turn-tls": str(tls).lower(),
        "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - site's URI
            data = json.loads(resp.read(1 << 20))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TurnError(f"the TURN REST service {uri} gave no credentials: {exc}") from None
    return parse_rest_answer(data, uri)


def parse_rest_answer(data: Any, uri: str = "the TURN REST service") -> tuple[
        list[IceServer], int | None]:
    if not isinstance(data, dict):
        raise TurnError(f"{uri} answered {type(data).__name__}, not a JSON object")
    servers: list[IceServer] = []
    if isinstance(data.get("iceServers"), list):
        for entry in data["iceServers"]:
            if not isinstance(entry, dict):
                continue
            urls = entry.get("urls")
            urls = [urls] if isinstance(urls, str) else urls
            good = tuple(u for u in urls or [] if isinstance(u, str) and _ice_scheme(u))
            if good:
                servers.append(IceServer(good, _opt_str(entry.get("username")),
                                         _opt_str(entry.get("credential"))))
    elif isinstance(data.get("uris"), list):
        good = tuple(u for u in data["uris"] if isinstance(u, str) and _ice_scheme(u))
        if good:
            servers.append(IceServer(good, _opt_str(data.get("username")),
                                     _opt_str(data.get("password"))))
    if not servers:
        raise TurnError(f"{uri} answered no TURN server (expected 'uris' or 'iceServers')")
    ttl = data.get("ttl")
    refresh = int(ttl) * 3 // 4 if isinstance(ttl, (int, float)) and ttl > 0 else None
    return servers, refresh


def _ice_scheme(url: str) -> bool:
    return url.lower().startswith(("turn:", "turns:", "stun:", "stuns:"))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
