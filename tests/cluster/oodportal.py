"""Open OnDemand's portal for the OOD tests: Debian's Apache httpd running the ood-portal.conf
that OOD's own ood-portal-generator writes from a test ood_portal.yml, with mod_ood_proxy's
Lua files used in place from the vendored sources (unmodified).

The portal is its own Apache instance (never the system service): its own ServerRoot-free
config, pid file, logs and ports, all under a directory and on ports named from
HPCDESK_TEST_NET (another run with another tag gets others). It serves HTTPS to the browser
(a test certificate), asks for basic auth (a test htpasswd user, mapped to the system user by
`user_map_match`), and offers all four node routes: /rnode, /node (plain HTTP to the node)
and /secure-rnode, /secure-node (https/wss to the node: SSLProxyEngine, OOD_SECURE_UPSTREAM).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from oodharness import vendor_dir
from tooling import require

from harness.devcluster import run

_NET = os.environ.get("HPCDESK_TEST_NET", "10.80")
TAG = os.environ.get("HPCDESK_TEST_NET_TAG", "h10")
# One port per run, from the test network's second octet (10.118 -> 21180).
PORT = 20000 + (int(_NET.split(".")[1]) % 500) * 10
ORIGIN = f"https://127.0.0.1:{PORT}"


# mod_ood_proxy's Lua, ood-portal.conf's directives (Header, RequestHeader, SetEnv, Alias,
# RedirectMatch, auth), the proxy and TLS: Debian's apache2 ships them all as modules.
MODULES = ["mpm_event", "authz_core", "authz_user", "authn_core", "authn_file",
           "auth_basic", "alias", "env", "headers", "mime", "setenvif",
           "socache_shmcb", "ssl", "lua", "proxy", "proxy_http", "proxy_wstunnel"]

HTTPD_CONF = """# hpcdesk test portal: its own Apache instance (not the system service)
DefaultRuntimeDir "{root}/run"
PidFile "{root}/run/httpd.pid"
Mutex file:{root}/run default
ErrorLog "{root}/logs/server-error.log"
LogLevel warn
User www-data
Group www-data
ServerName 127.0.0.1
ServerTokens Prod
TypesConfig /etc/mime.types
# Debian's apache2.conf defines the log formats that ood-portal.conf names.
LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
{modules}
SSLSessionCache "shmcb:{root}/run/ssl_scache(512000)"
Include "{root}/ood-portal.conf"
"""


@dataclass
class Portal:
    root: Path
    base: str          # https://127.0.0.1:PORT
    origin: str
    login: tuple[str, str]  # the htpasswd user and password a person types into the prompt
    conf: Path         # the generated ood-portal.conf

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "127.0.0.1_access_ssl.log"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "127.0.0.1_error_ssl.log"

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.root / "logs").iterdir()))


def portal_yml(root: Path, user_map: str) -> dict[str, object]:
    """The test site's ood_portal.yml: what docs/ood.md tells an admin to set, plus paths."""
    lua = vendor_dir() / "ondemand/mod_ood_proxy/lib"
    return {
        "listen_addr_port": [f"127.0.0.1:{PORT}"],
        "port": PORT,
        "servername": "127.0.0.1",
        "ssl": [f'SSLCertificateFile "{root}/portal-cert.pem"',
                f'SSLCertificateKeyFile "{root}/portal-key.pem"'],
        "logroot": str(root / "logs"),
        "lua_root": str(lua),
        "user_map_match": user_map,
        "auth": ["AuthType Basic", 'AuthName "Open OnDemand"', "AuthBasicProvider file",
                 f'AuthUserFile "{root}/htpasswd"', "Require valid-user"],
        "rnode_uri": "/rnode", "node_uri": "/node",
        "secure_rnode_uri": "/secure-rnode", "secure_node_uri": "/secure-node",
        "use_rewrites": False, "use_maintenance": False,
    }


def generate_conf(root: Path, config: Path, out: Path) -> None:
    """Run OOD's ood-portal-generator (its `generate` command) on ood_portal.yml."""
    require("ruby", package="ruby")
    gen = vendor_dir() / "ondemand/ood-portal-generator"
    # Debian 12's ruby-dotenv (2.4) predates Dotenv.parse, which the generator calls to read
    # /etc/os-release; the same parse through that version's own API (Debian 13's has it).
    compat = root / "dotenv_parse.rb"
    compat.write_text('require "dotenv"\nunless Dotenv.respond_to?(:parse)\n  module Dotenv\n'
                      '    def self.parse(*files) = files.each_with_object({}) { |f, h| '
                      'h.update(Environment.new(f, false)) }\n  end\nend\n')
    proc = run(["ruby", "-r", str(compat), "-I", str(gen / "lib"), "-rood_portal_generator",
                 "-e", "OodPortalGenerator::Application.start('generate')", "--",
                 "-c", str(config), "-o", str(out)])
    assert proc.returncode == 0, f"ood-portal-generator failed: {proc.stderr}"


def _listening(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise AssertionError(f"apache2 exited ({proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    raise AssertionError(f"apache2 did not listen on {port} within {timeout} s")


@contextmanager
def running_portal(login_user: str) -> Iterator[Portal]:
    require("apache2", "/usr/sbin/apache2", package="apache2")
    require("htpasswd", package="apache2-utils")
    require("/usr/lib/x86_64-linux-gnu/lua/5.3/posix.so", package="lua-posix")  # posix.pwd
    root = Path(f"/run/hpcdesk-ood-portal-{TAG}")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("run", "logs"):
        (root / sub).mkdir(parents=True)
    run(["chown", "www-data:", str(root / "run")])
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
          "subjectAltName=IP:127.0.0.1", "-keyout", str(root / "portal-key.pem"),
          "-out", str(root / "portal-cert.pem")], check=True)
    password = secrets.token_urlsafe(12)
    # The password goes in on stdin (-i), never on a command line.
    run(["htpasswd", "-c", "-i", "-B", str(root / "htpasswd"), login_user], input=password,
         check=True)
    run(["chgrp", "www-data", str(root / "htpasswd")])
    os.chmod(root / "htpasswd", 0o640)
    config = root / "ood_portal.yml"
    # user_map_match: the authenticated name is the system user (a site maps e.g. user@REALM).
    config.write_text(yaml.safe_dump(portal_yml(root, r"^([a-z][a-z0-9_-]*)$")))
    conf = root / "ood-portal.conf"
    generate_conf(root, config, conf)
    mods = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so"
                     for m in MODULES)
    (root / "httpd.conf").write_text(HTTPD_CONF.format(root=root, modules=mods))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} (this run's portal) is taken: another run with "
                        f"HPCDESK_TEST_NET={_NET}? choose another HPCDESK_TEST_NET")
    check = run(["/usr/sbin/apache2", "-t", "-f", str(root / "httpd.conf")])
    assert check.returncode == 0, f"apache2 -t: {check.stderr}"
    proc = subprocess.Popen(["/usr/sbin/apache2", "-f", str(root / "httpd.conf"),
                             "-DFOREGROUND"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=str(root))
    try:
        _listening(PORT, proc)
        yield Portal(root, f"https://127.0.0.1:{PORT}", ORIGIN, (login_user, password), conf)
    finally:
        proc.terminate()  # apache2's parent: it stops its own workers
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
