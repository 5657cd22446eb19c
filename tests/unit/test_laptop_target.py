"""`hpcdesk tunnel`: host specs and ~/.ssh/config resolved into hops."""

from __future__ import annotations

import getpass
from pathlib import Path

import paramiko
import pytest

from hpcdesk.errors import UsageError
from hpcdesk.laptop.target import load_config, parse_spec, route

CONFIG = """
Host cluster
    HostName login.cluster.example
    User alice
    Port 2222
    IdentityFile ~/.ssh/cluster_key
    IdentitiesOnly yes
    ProxyJump gate

Host gate
    HostName bastion.example
    User ab
    ProxyCommand nc %h %p

Host inner
    HostName 10.0.0.5
    ProxyJump alice@gate:2200,cluster

Host viaproxy
    HostName 10.0.0.6
    ProxyCommand ssh -W %h:%p gate
    UserKnownHostsFile ~/.ssh/cluster_hosts
    HostKeyAlias viaproxy-alias

Host loop1
    ProxyJump loop2
Host loop2
    ProxyJump loop1
"""


def cfg() -> paramiko.SSHConfig:
    return paramiko.SSHConfig.from_text(CONFIG)


@pytest.mark.parametrize(("text", "user", "host", "port"), [
    ("login", None, "login", None),
    ("bob@login:2201", "bob", "login", 2201),
    ("ssh://bob@login:2201/", "bob", "login", 2201),
    ("[fe80::1]:22", None, "fe80::1", 22),
    ("bob@fe80::1", "bob", "fe80::1", None),
    ("a.b@c.d@login", "a.b@c.d", "login", None),
])
def test_parse_spec(text: str, user: str | None, host: str, port: int | None) -> None:
    spec = parse_spec(text)
    assert (spec.user, spec.host, spec.port) == (user, host, port)


@pytest.mark.parametrize("text", ["", "bob@", "login:0", "login:99999", "login:ssh", "-oProxyCommand=x",
                                  "[fe80::1", "log in"])
def test_parse_spec_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="not a host"):
        parse_spec(text)


def test_alias_hostname_user_port_identity_and_proxyjump() -> None:
    hops = route("cluster", None, cfg())
    assert [h.hostname for h in hops] == ["bastion.example", "login.cluster.example"]
    gate, login = hops
    assert (login.user, login.port, login.name) == ("alice", 2222, "cluster")
    assert login.identity_files == (str(Path("~/.ssh/cluster_key").expanduser()),)
    assert login.identities_only
    assert login.proxy_command is None
    # The jump host keeps its own settings: its ProxyCommand reaches it (tokens expanded).
    assert (gate.user, gate.port) == ("ab", 22)
    assert gate.proxy_command == "nc bastion.example 22"


def test_command_line_overrides_config() -> None:
    hops = route("bob@cluster:2300", "", cfg())  # empty --jump: the config's ProxyJump
    assert (hops[-1].user, hops[-1].port) == ("bob", 2300)
    hops = route("cluster", "carol@10.1.1.1:2022", cfg())
    assert [(h.user, h.hostname, h.port) for h in hops] == [
        ("carol", "10.1.1.1", 2022), ("alice", "login.cluster.example", 2222)]


def test_jump_list_and_nested_jumps() -> None:
    hops = route("inner", None, cfg())
    # gate:2200 as alice, then cluster (itself behind gate), then the target.
    assert [(h.hostname, h.port) for h in hops] == [
        ("bastion.example", 2200), ("bastion.example", 22), ("login.cluster.example", 2222),
        ("10.0.0.5", 22)]
    assert hops[0].user == "alice"


def test_proxycommand_known_hosts_and_alias() -> None:
    (hop,) = route("viaproxy", None, cfg())
    assert hop.proxy_command == "ssh -W 10.0.0.6:22 gate"
    assert hop.known_hosts_files[0] == str(Path("~/.ssh/cluster_hosts").expanduser())
    assert hop.host_key_alias == "viaproxy-alias"


def test_plain_host_defaults() -> None:
    (hop,) = route("10.9.9.9", None, paramiko.SSHConfig())
    assert (hop.hostname, hop.port, hop.user) == ("10.9.9.9", 22, getpass.getuser())
    assert hop.use_agent and not hop.identity_files


def test_jump_loop_is_an_error() -> None:
    with pytest.raises(UsageError, match="ProxyJump loop"):
        route("loop1", None, cfg())


def test_config_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope")
    good = tmp_path / "config"
    good.write_text("Host x\n  HostName 10.2.3.4\n")
    assert load_config(good).lookup("x")["hostname"] == "10.2.3.4"


@pytest.mark.parametrize(("argv", "words"), [
    (["tunnel", "--login", "h"], "name a session (or job id) to connect to, or --submit"),
    (["tunnel", "abc", "--login", "h", "--submit"], "name a session (or job id)"),
    (["tunnel", "abc", "--login", "h", "--local-port", "70000"], "--local-port 70000"),
    (["tunnel", "abc", "--login", "bad host"], "'bad host' is not a host"),
    (["tunnel", "abc", "--login", "h", "-F", "/nonexistent/ssh_config"], "does not exist"),
])
def test_command_line_mistakes_are_exit_2_before_any_connection(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcdesk import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcdesk: error: ") and words in err
    assert "connecting" not in err
