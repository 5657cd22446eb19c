"""Logging in: ssh-agent, key files, then keyboard-interactive questions on the terminal.

The order is OpenSSH's: keys first (the agent's, then IdentityFile entries, then the default
key files), then keyboard-interactive (PAM: passwords, one-time codes, any number of
questions per round), then a password. A server that wants two factors (publickey, then
keyboard-interactive) is followed through both. Loaded keys and passphrases stay in memory
for the life of the tunnel, so a reconnect asks again only what the server asks again
(a new one-time code).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paramiko

from hpcdesk.errors import UsageError
from hpcdesk.laptop.target import Hop

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


class AuthFailed(UsageError):
    """The login was refused (exit code 2: the user's credentials need fixing)."""


class Prompter(Protocol):
    def ask(self, prompt: str, echo: bool, asker: str = "the server") -> str: ...

    def tell(self, text: str) -> None: ...

    def restore(self) -> None: ...


class TerminalPrompter:
    """Questions on the terminal; answers that should not echo are read without echo.

    paramiko asks keyboard-interactive questions from its own thread; if Ctrl-C ends the
    tunnel while a question waits with echo off, `restore` puts the terminal back."""

    def __init__(self) -> None:
        self._saved: list[Any] | None = None
        try:
            import termios  # POSIX only

            if sys.stdin and sys.stdin.isatty():
                self._saved = termios.tcgetattr(sys.stdin.fileno())
        except (ImportError, OSError, ValueError):
            self._saved = None

    def restore(self) -> None:
        if self._saved is None:
            return
        try:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)
        except (ImportError, OSError, ValueError):
            log.debug("could not restore the terminal", exc_info=True)

    def ask(self, prompt: str, echo: bool, asker: str = "the server") -> str:
        """`asker`: who wants the answer, for the error when nobody can be asked."""
        if not sys.stdin or not sys.stdin.isatty():
            raise AuthFailed(f"{asker} asks {prompt.strip()!r}, but there is no terminal "
                             "to ask you on", hint="run hpcdesk tunnel in a terminal" + (
                                 "" if asker == "the server" else
                                 ", or add the key to ssh-agent first (ssh-add)"))
        try:
            if echo:
                sys.stderr.write(prompt)
                sys.stderr.flush()
                return sys.stdin.readline().rstrip("\r\n")
            return getpass.getpass(prompt, stream=sys.stderr)
        except EOFError:
            raise AuthFailed(f"no answer to {prompt.strip()!r}") from None

    def tell(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


@dataclass
class Authenticator:
    prompter: Prompter
    _keys: dict[str, paramiko.PKey | None] = field(default_factory=dict)
    _agent: paramiko.Agent | None = None
    _agent_tried: bool = False

    def close(self) -> None:
        self.prompter.restore()
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def agent_keys(self) -> Sequence[paramiko.PKey]:
        if not self._agent_tried:
            self._agent_tried = True
            if os.environ.get("SSH_AUTH_SOCK") or sys.platform == "win32":
                try:
                    self._agent = paramiko.Agent()
                except (paramiko.SSHException, OSError) as exc:
                    log.info("ssh-agent not usable: %s", exc)
        return self._agent.get_keys() if self._agent is not None else ()

    def key_file(self, path: str) -> paramiko.PKey | None:
        """The private key in `path` (asking for its passphrase once), or None if unusable."""
        if path in self._keys:
            return self._keys[path]
        key = None
        passphrase: str | None = None
        asked = 0
        while os.path.isfile(path) and asked <= 3:
            try:
                key = paramiko.PKey.from_path(path, passphrase.encode() if passphrase else None)
                break
            except (paramiko.PasswordRequiredException, TypeError, ValueError,
                    paramiko.SSHException) as exc:
                # An encrypted key without a passphrase raises PasswordRequiredException or
                # TypeError (legacy PEM); a wrong passphrase ValueError or SSHException.
                encrypted = isinstance(exc, (paramiko.PasswordRequiredException, TypeError))
                if passphrase is None and not encrypted:
                    log.info("skipping %s: %s", path, exc)
                    break
                if passphrase is not None:
                    self.prompter.tell("Bad passphrase, try again.")
                if asked == 3:
                    break
                asked += 1
                passphrase = self.prompter.ask(f"Enter passphrase for key '{path}': ", False,
                                               asker="hpcdesk, to unlock your key,")
            except OSError as exc:
                log.info("skipping %s: %s", path, exc)
                break
        self._keys[path] = key
        return key

    def candidates(self, hop: Hop) -> list[tuple[str, paramiko.PKey]]:
        files = [os.path.expanduser(f) for f in (hop.identity_files or DEFAULT_KEYS)]
        out: list[tuple[str, paramiko.PKey]] = []
        wanted = {_public_blob(f) for f in files} - {None}
        if hop.use_agent:
            for key in self.agent_keys():
                if not hop.identities_only or key.asbytes() in wanted:
                    out.append((f"agent key {key.get_name()}", key))
        seen = {k.asbytes() for _, k in out}
        for path in files:
            pub = _public_blob(path)
            if pub is not None and pub in seen:
                continue  # the agent holds it already: no passphrase question
            key = self.key_file(path)
            if key is not None and key.asbytes() not in seen:
                seen.add(key.asbytes())
                out.append((path, key))
        return out

    def login(self, transport: paramiko.Transport, hop: Hop) -> None:
        """Authenticate `transport` as hop.user, or raise AuthFailed naming what was tried."""
        user = hop.user
        try:
            transport.auth_none(user)
            return
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
        except paramiko.AuthenticationException:
            allowed = ["publickey", "keyboard-interactive", "password"]
        tried: list[str] = []
        if "publickey" in allowed:
            for label, key in self.candidates(hop):
                tried.append(label)
                try:
                    remaining = transport.auth_publickey(user, key)
                except paramiko.AuthenticationException:
                    continue
                if transport.is_authenticated():
                    return
                allowed = list(remaining)  # partial success: a second factor follows
                break
        if "keyboard-interactive" in allowed:
            tried.append("keyboard-interactive")
            try:
                transport.auth_interactive(user, self._answer)
            except paramiko.AuthenticationException:
                raise AuthFailed(
                    f"{hop.describe()} refused the answers to its questions (a wrong or "
                    "expired one-time code, or a wrong password)",
                    hint="run hpcdesk tunnel again and enter a fresh code") from None
            if transport.is_authenticated():
                return
        elif "password" in allowed:
            tried.append("password")
            secret = self.prompter.ask(f"{user}@{hop.hostname}'s password: ", False)
            try:
                transport.auth_password(user, secret)
            except paramiko.AuthenticationException:
                raise AuthFailed(f"{hop.describe()} refused the password") from None
            if transport.is_authenticated():
                return
        raise AuthFailed(
            f"{hop.describe()} refused the login (tried: {', '.join(tried) or 'nothing'}; "
            f"the server accepts: {', '.join(allowed) or 'nothing'})",
            hint="check that `ssh` itself logs in; add your key to ssh-agent (ssh-add) or "
                 "name it with IdentityFile in ~/.ssh/config")

    def _answer(self, title: str, instructions: str, prompts: Sequence[tuple[str, bool]]
                ) -> list[str]:
        for text in (title, instructions):
            if text.strip():
                self.prompter.tell(text.strip())
        return [self.prompter.ask(prompt, echo) for prompt, echo in prompts]


def _public_blob(private_path: str) -> bytes | None:
    """The key blob of `path`.pub, to match agent keys without reading the private key."""
    try:
        with open(private_path + ".pub", encoding="utf-8") as fh:
            fields = fh.read().split()
        return base64.b64decode(fields[1], validate=True) if len(fields) >= 2 else None
    except (OSError, ValueError, binascii.Error):
        return None
