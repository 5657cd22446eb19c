"""A laptop, a bastion and SSH servers around the dev cluster's login side, for `hpcdesk tunnel`.

Network (all names start with h10-, all addresses are in 10.80.0.0/16):

    laptop ns h10-laptop                root namespace (login side, Slurm)      bastion ns
    10.80.1.2 ----- veth h10-lap ------ 10.80.1.1  sshd :2210 (keys)
                                                    sshd :2211 (key + PAM TOTP)
    10.80.2.1 ----- veth h10-lb ------------------------------------------------ 10.80.2.2 sshd :22
                                        10.80.3.1 ----- veth h10-bas ----------- 10.80.3.2

The laptop has routes to 10.80.1.0/24 and 10.80.2.0/24 only: it cannot reach the compute
nodes (10.77.0.0/24) nor the login side's 10.80.3.1, which only the bastion reaches.

Every sshd is Debian's OpenSSH, started here with its own config, host key, pid file and PAM
service (`h10-sshd-*`, written to /etc/pam.d for the test's lifetime and removed after; a
service name no other login uses). OpenSSH names its PAM service after its program (before
9.8) or PAMServiceName (newer): both are handled.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Another tag and /16 let two runs on one machine keep apart (HPCDESK_TEST_NET_TAG=h13
# HPCDESK_TEST_NET=10.83); the defaults are the ones drawn above.
TAG = os.environ.get("HPCDESK_TEST_NET_TAG", "h10")
_NET = os.environ.get("HPCDESK_TEST_NET", "10.80")
NS_LAPTOP, NS_BASTION = f"{TAG}-laptop", f"{TAG}-bastion"
LOGIN_IP, LAPTOP_IP = f"{_NET}.1.1", f"{_NET}.1.2"
LAPTOP_B_IP, BASTION_IP = f"{_NET}.2.1", f"{_NET}.2.2"
LOGIN_INNER_IP, BASTION_INNER_IP = f"{_NET}.3.1", f"{_NET}.3.2"
PORT_KEY, PORT_OTP = 2210, 2211
SSHD = "/usr/sbin/sshd"


def sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


def in_ns(netns: str | None) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}"] if netns else []


# /run/hpcdesk-tunnel-XXXX: one run's files (with another tag: /run/hpcdesk-tunnel-TAG-XXXX)
WORKDIR_PREFIX = "hpcdesk-tunnel-" if TAG == "h10" else f"hpcdesk-tunnel-{TAG}-"


def pam_module(name: str) -> str:
    """Where this machine keeps a PAM module (multiarch, /lib or /usr/lib)."""
    found = sorted(glob.glob(f"/usr/lib/*/security/{name}") + glob.glob(f"/lib/*/security/{name}"))
    return found[0] if found else f"/usr/lib/x86_64-linux-gnu/security/{name}"


def clean_stale() -> None:
    """What an earlier run that was killed left behind: its sshd processes (found by their
    config under /run/hpcdesk-tunnel-*), PAM service files, namespaces and files."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if any(a.startswith(f"/run/{WORKDIR_PREFIX}".encode()) and
                       a.endswith(b"/sshd_config") for a in cmd):
                    os.kill(int(entry), signal.SIGKILL)
    for pam in Path("/etc/pam.d").glob(f"{TAG}-sshd-*"):
        pam.unlink()
    network_down()
    for old in Path("/run").glob(f"{WORKDIR_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)


# -- network ---------------------------------------------------------------------------------
def network_down() -> None:
    for ns in (NS_LAPTOP, NS_BASTION):
        if Path(f"/run/netns/{ns}").exists():
            sh("ip", "netns", "del", ns, check=False)
    for link in (f"{TAG}-lap", f"{TAG}-bas"):  # root-side ends (gone with their peers)
        sh("ip", "link", "del", link, check=False)


def _veth(a: str, a_ns: str | None, a_ip: str, b: str, b_ns: str, b_ip: str) -> None:
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", b, "netns", b_ns)
    if a_ns:
        sh("ip", "link", "set", a, "netns", a_ns)
    sh(*in_ns(a_ns), "ip", "addr", "add", f"{a_ip}/24", "dev", a)
    sh(*in_ns(a_ns), "ip", "link", "set", a, "up")
    sh(*in_ns(b_ns), "ip", "addr", "add", f"{b_ip}/24", "dev", b)
    sh(*in_ns(b_ns), "ip", "link", "set", b, "up")


def network_up() -> None:
    network_down()
    for ns in (NS_LAPTOP, NS_BASTION):
        sh("ip", "netns", "add", ns)
        sh(*in_ns(ns), "ip", "link", "set", "lo", "up")
    _veth(f"{TAG}-lap", None, LOGIN_IP, f"{TAG}-lap-in", NS_LAPTOP, LAPTOP_IP)
    _veth(f"{TAG}-lb-l", NS_LAPTOP, LAPTOP_B_IP, f"{TAG}-lb-b", NS_BASTION, BASTION_IP)
    _veth(f"{TAG}-bas", None, LOGIN_INNER_IP, f"{TAG}-bas-in", NS_BASTION, BASTION_INNER_IP)


# -- sshd ------------------------------------------------------------------------------------
def _supports(option: str, workdir: Path) -> bool:
    """Whether this sshd knows a config option (sshd -t on a minimal config)."""
    key = workdir / "probe_key"
    if not key.exists():
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    cfg = workdir / "probe.conf"
    cfg.write_text(f"HostKey {key}\n{option}\n")
    return sh(SSHD, "-t", "-f", str(cfg), check=False).returncode == 0


@dataclass
class Sshd:
    """One OpenSSH server with its own everything; `pam` is the PAM stack (auth lines)."""

    name: str                      # also its PAM service name: h10-sshd-<name>
    workdir: Path
    listen: list[tuple[str, int]]
    user: str
    authorized_key: str
    netns: str | None = None
    auth_methods: str = "publickey"
    pam_auth: str = "auth required pam_deny.so"
    proc: subprocess.Popen[bytes] | None = None
    host_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.workdir / self.name
        self.dir.mkdir(mode=0o755)
        self.host_key = self.dir / "host_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f",
           str(self.host_key))
        self.service = f"{TAG}-sshd-{self.name}"
        self.log = self.dir / "sshd.log"

    @property
    def public_key(self) -> str:
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def fingerprint(self) -> str:
        return sh("ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host_key}.pub").stdout.split()[1]

    def start(self) -> None:
        keys = self.dir / "authorized_keys"
        keys.mkdir(mode=0o755)
        (keys / self.user).write_text(self.authorized_key + "\n")
        os.chmod(keys / self.user, 0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # OpenSSH's privsep directory
        pam_file = Path("/etc/pam.d") / self.service
        pam_file.write_text(f"# {self.service}: hpcdesk tunnel tests; removed when they end\n"
                            f"{self.pam_auth}\naccount required pam_permit.so\n"
                            "session required pam_permit.so\npassword required pam_deny.so\n")
        lines = [f"ListenAddress {ip}:{port}" for ip, port in self.listen] + [
            f"HostKey {self.host_key}", f"PidFile {self.dir}/sshd.pid",
            f"AuthorizedKeysFile {keys}/%u", "UsePAM yes", "PasswordAuthentication no",
            f"KbdInteractiveAuthentication {'yes' if 'keyboard' in self.auth_methods else 'no'}",
            f"AuthenticationMethods {self.auth_methods}", f"AllowUsers {self.user}",
            "AllowTcpForwarding yes", "PermitRootLogin no", "X11Forwarding no",
            "PrintMotd no", "LogLevel VERBOSE", "MaxStartups 100",
        ]
        exe = SSHD
        if _supports("PAMServiceName x", self.dir):
            lines.append(f"PAMServiceName {self.service}")
        else:  # OpenSSH < 9.8 names the PAM service after its program
            exe = str(self.dir / self.service)
            os.symlink(SSHD, exe)
        if _supports("PerSourcePenalties no", self.dir):
            lines.append("PerSourcePenalties no")  # the tests fail logins on purpose
        config = self.dir / "sshd_config"
        config.write_text("\n".join(lines) + "\n")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*in_ns(self.netns), exe, "-D", "-e", "-f", str(config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while self.log.read_text().count("Server listening on") < len(self.listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd {self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def listener_pid(self) -> int:
        """The sshd listening for connections (nsenter execs it, so it is our child)."""
        assert self.proc is not None
        return self.proc.pid

    def connection_pids(self) -> list[int]:
        """Every process serving a connection: the listener's descendants."""
        from hpcdesk.node.procs import descendants

        return descendants(self.listener_pid())

    def kill_connections(self) -> list[int]:
        pids = self.connection_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def stop(self) -> None:
        if self.proc is not None:
            self.kill_connections()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        with contextlib.suppress(FileNotFoundError):
            (Path("/etc/pam.d") / self.service).unlink()


# -- the laptop ------------------------------------------------------------------------------
@dataclass
class Laptop:
    """The test user on a laptop: its own home (~/.ssh/config, key, known_hosts)."""

    home: Path
    user: str
    hpcdesk: Path

    def __post_init__(self) -> None:
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.ssh = self.home / ".ssh"
        self.ssh.mkdir(parents=True, mode=0o700)
        self.key = self.ssh / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "laptop", "-f", str(self.key))
        self.other_key = self.ssh / "not_authorized"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f",
           str(self.other_key))
        # Only ssh-agent holds this one (the file lives outside ~/.ssh).
        self.agent_key = self.home / "agent-only" / "key"
        self.agent_key.parent.mkdir()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agent", "-f",
           str(self.agent_key))

    @property
    def public_key(self) -> str:
        return Path(f"{self.key}.pub").read_text().strip()

    @property
    def authorized_keys(self) -> str:
        return "\n".join(Path(f"{k}.pub").read_text().strip()
                         for k in (self.key, self.agent_key))

    def write(self, name: str, text: str) -> Path:
        path = self.ssh / name
        path.write_text(text)
        return path

    def own(self) -> None:
        for root, dirs, files in os.walk(self.home):
            for n in [*dirs, *files]:
                os.chown(os.path.join(root, n), self.uid, self.gid)
        os.chown(self.home, self.uid, self.gid)
        os.chmod(self.home, 0o700)

    def as_user(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """argv run as the user in the laptop namespace, with the laptop's environment."""
        venv_bin = self.hpcdesk.parent
        return [*in_ns(NS_LAPTOP), "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                "--init-groups", "env", "-i", f"HOME={self.home}", f"USER={self.user}",
                f"LOGNAME={self.user}", f"PATH={venv_bin}:/usr/bin:/bin", "LANG=C.UTF-8",
                *(f"{k}={v}" for k, v in (env or {}).items()), *argv]

    def argv(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        return self.as_user(str(self.hpcdesk), "tunnel", *args, env=env)

    def run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args, env=env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")


def laptop_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Python (this one) inside the laptop's network namespace."""
    import sys

    return subprocess.run([*in_ns(NS_LAPTOP), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)


def cleanup(workdir: Path, servers: list[Sshd]) -> None:
    for s in servers:
        s.stop()
    network_down()
    shutil.rmtree(workdir, ignore_errors=True)
