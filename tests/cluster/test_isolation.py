"""Issue 12 scenarios 9 and 10 on the dev cluster: a second user on the same cluster cannot
get into a desktop, and the web UI never answers 200 without credentials."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import User, http_status

from harness.devcluster import NODE_IPS, SITE, node_exec

pytestmark = pytest.mark.cluster

# Runs as the SECOND user, on the desktop's node, with the password on stdin: every place a
# password could leak to another user, read the way that user can read it.
SNOOP = textwrap.dedent("""
    import json, os, subprocess, sys
    password, sdir, job = sys.stdin.read().strip(), sys.argv[1], sys.argv[2]
    found, refused = [], []
    for name in ("connection.json", "node.json", "agent.log", "job.sh", "selkies.log"):
        try:
            if password in open(os.path.join(sdir, name), errors="replace").read():
                found.append(name)
        except OSError as exc:
            refused.append(name)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for what in ("cmdline", "environ"):
                try:
                    if password.encode() in open(f"/proc/{pid}/{what}", "rb").read():
                        found.append(f"/proc/{pid}/{what}")
                except OSError:
                    pass
    for top in ("/tmp", "/var/tmp", "/dev/shm"):
        for root, dirs, files in os.walk(top):
            for f in files:
                try:
                    with open(os.path.join(root, f), "rb") as fh:
                        if password.encode() in fh.read(1 << 20):
                            found.append(os.path.join(root, f))
                except OSError:
                    pass
    for argv in (["squeue", "-a", "-o", "%all"], ["scontrol", "show", "job", "-dd", job],
                 ["scontrol", "write", "batch_script", job, "-"], ["ps", "-eww", "-o", "args"]):
        out = subprocess.run(argv, capture_output=True, text=True)
        if password in out.stdout + out.stderr:
            found.append(" ".join(argv))
    print(json.dumps({"found": found, "refused": refused}))
""")


@pytest.mark.reliability("S9 isolation from a second user",
                          "no password in files, /proc, node /tmp, Slurm output; 401")
def test_second_user_cannot_get_in(user: User, second_user: User,
                                   cleanup_jobs: list[str]) -> None:
    data = user.json("submit", *SITE)
    sid, node, url = str(data["session"]), str(data["node"]), str(data["url"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    password = str(data["password"])
    snoop = subprocess.run(
        ["bash", "tests/cluster/devcluster.sh", "exec", node, "runuser", "-u", second_user.name,
         "--", "python3", "-c", SNOOP, str(sdir), str(data["job_id"])],
        input=password, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2])
    assert snoop.returncode == 0, snoop.stderr
    report = json.loads(snoop.stdout)
    assert report["found"] == [], f"the second user found the password in {report['found']}"
    assert "connection.json" in report["refused"]
    # Over the network: no credentials, the second user's name, or a guess all get 401.
    assert http_status(url, None) == 401
    assert http_status(url, (second_user.name, "guess")) == 401
    assert http_status(url, (str(data["user"]), password[:-1])) == 401
    assert http_status(url, (str(data["user"]), password)) == 200
    # The second user's hpcdesk does not see or reach the first user's session.
    other = second_user.run("status", sid, *SITE)
    assert other.returncode == 2 and "no session" in other.stderr, other.stderr
    proc = node_exec(node, "runuser", "-u", second_user.name, "--", "cat",
                     str(sdir / "connection.json"))
    assert proc.returncode != 0 and password not in proc.stdout


def _served_certificate(url: str) -> bytes:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port)), timeout=10))


def _sha256(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@pytest.mark.reliability("S10 HTTPS without credentials",
                          "401, with a provided and with a generated certificate (fingerprint shown)")
def test_https_never_answers_200_without_credentials(user: User, cleanup_jobs: list[str]) -> None:
    # A generated certificate: hpcdesk shows its fingerprint, and that is what is served.
    gen = user.json("submit", *SITE)
    cleanup_jobs.append(str(gen["session"]))
    assert gen["url"].startswith("https://") and gen["tls"] == "self-signed"
    assert _sha256(_served_certificate(str(gen["url"]))).lower() == str(
        gen["tls_fingerprint"]).lower()
    human = user.run("status", str(gen["session"]), *SITE, check=True).stdout
    assert str(gen["tls_fingerprint"]) in human
    # A provided certificate (as a site would install): served as given.
    certs = user.home / "h12-tls"
    subprocess.run(["runuser", "-u", user.name, "--", "mkdir", "-p", "-m", "700", str(certs)],
                   check=True)
    ip = NODE_IPS["gpu02"]
    subprocess.run(["runuser", "-u", user.name, "--", "openssl", "req", "-x509", "-newkey",
                    "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hpcdesk-test",
                    "-addext", f"subjectAltName=IP:{ip},DNS:gpu02", "-keyout",
                    str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
                   check=True, capture_output=True)
    site = user.json("submit", *SITE, "--set", f"desktop.https_cert={certs / 'cert.pem'}",
                     "--set", f"desktop.https_key={certs / 'key.pem'}",
                     "--set", "scheduler.extra_args=['--nodelist=gpu02']")
    cleanup_jobs.append(str(site["session"]))
    assert site["tls"] == "site"
    given = ssl.PEM_cert_to_DER_cert((certs / "cert.pem").read_text())
    assert _served_certificate(str(site["url"])) == given
    for data in (gen, site):
        url = str(data["url"])
        assert http_status(url, None) == 401
        assert http_status(url + "index.html", None) == 401
        assert http_status(url, (str(data["user"]), "wrong")) == 401
        assert http_status(url, (str(data["user"]), str(data["password"]))) == 200
