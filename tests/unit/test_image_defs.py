"""images/glx-desktop.def and images/egl-desktop.def, and the entrypoint they install.

The upstream images cannot be pulled here, so these tests take the definition files apart the
way Apptainer does (header, %sections, {{ VAR }} build arguments), check the entrypoint with
bash -n, shellcheck and static rules (no sudo, no driver download, nothing written to /etc,
no secret in any argv), run its functions, and finally run the whole EGL flow against a real
Xvfb and nginx with stand-ins for KDE, dbus-launch and selkies-gstreamer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tooling import require, skip_with_gpu

from harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
FLAVORS = ("glx", "egl")
ENTRYPOINT = "/opt/hpcdesk/entrypoint.sh"
ENTRYPOINT_LIB = "/opt/hpcdesk/entrypoint-lib.sh"  # beside it: what both entrypoints share
VALID_SECTIONS = {"help", "setup", "files", "labels", "environment", "pre", "post", "runscript",
                  "test", "startscript", "arguments"}
BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")  # Apptainer's build-argument pattern
SECRETS = ("password", "PASSWD", "SELKIES_BASIC_AUTH_PASSWORD", "turn_password", "turn_secret",
           "SELKIES_TURN_PASSWORD", "SELKIES_TURN_SHARED_SECRET")
PASSWORD = "Sx9-hunter2-token"  # a test value, searched for in every argv


# --- the definition files, parsed like Apptainer's parser does -------------------------------

@dataclass
class DefFile:
    header: dict[str, str]
    sections: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def parse_def(text: str) -> DefFile:
    """A section starts at a line whose first word starts with '%' (Apptainer's rule)."""
    header: dict[str, str] = {}
    d = DefFile(header)
    current: str | None = None
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            d.order.append(current)
            d.sections.setdefault(current, "")
            continue
        if current is None:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                key, sep, value = stripped.partition(":")
                assert sep, f"header line without ':': {line!r}"
                header[key.strip().lower()] = value.split("#")[0].strip()
        else:
            d.sections[current] += line + "\n"
    return d


def def_text(flavor: str) -> str:
    return (IMAGES / f"{flavor}-desktop.def").read_text()


def entrypoint_source(flavor: str) -> Path:
    """The file that the definition's %files section installs as the entrypoint."""
    files = parse_def(def_text(flavor)).sections["files"]
    for line in files.splitlines():
        words = line.split()
        if len(words) == 2 and words[1] == ENTRYPOINT:
            return IMAGES / words[0]
    raise AssertionError(f"%files does not install {ENTRYPOINT}")


def entrypoint_of(flavor: str) -> str:
    return entrypoint_source(flavor).read_text()


def code_lines(script: str) -> list[str]:
    """The script without comment lines and heredoc bodies (data written to files)."""
    out: list[str] = []
    end: str | None = None
    for line in script.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            out.append("")
            continue
        if line.lstrip().startswith("#"):
            out.append("")
            continue
        m = re.search(r"(?<!<)<<-?\s*['\"]?([A-Za-z_]\w*)['\"]?", line)
        if m:
            end = m.group(1)
        out.append(line)
    return out


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ep") / "entrypoint.sh"
    path.write_text(entrypoint_of("glx"))
    path.chmod(0o755)
    shutil.copy(IMAGES / "entrypoint-lib.sh", path.parent / "entrypoint-lib.sh")
    return path


@pytest.mark.parametrize("flavor", ["glx", "egl", "debian", "kde"])
def test_every_image_installs_the_shared_entrypoint_functions(flavor: str) -> None:
    d = parse_def(def_text(flavor))
    assert f"entrypoint-lib.sh {ENTRYPOINT_LIB}" in d.sections["files"]
    post = upstream_post(flavor) if flavor in FLAVORS else d.sections["post"]
    if flavor in ("debian", "kde"):  # hpcdesk's images: one shared %post script
        assert "debian/build.sh /opt/.hpcdesk-build-files/build.sh" in d.sections["files"]
        assert f"build.sh {'xfce' if flavor == 'debian' else 'kde'}" in post
        post = (IMAGES / "debian/build.sh").read_text()
    assert f"bash -n {ENTRYPOINT_LIB}" in post


def contract_keys() -> set[str]:
    """Every variable hpcdesk passes to the upstream images (contract_env plus the password)."""
    from hpcdesk.node.runtime import DesktopPlan
    from hpcdesk.node.runtime.apptainer import ImageKind, contract_env
    from hpcdesk.node.xserver import XFiles
    from hpcdesk.request import DesktopRequest
    from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig

    keys: set[str] = {"PASSWD", "SELKIES_BASIC_AUTH_PASSWORD"}
    for interface in ("selkies", "vnc"):
        req = DesktopRequest(
            session_id="s1", user="alice", cpus=4, gpus=1, start_timeout=60,
            desktop=DesktopConfig(interface=interface),  # type: ignore[arg-type]
            runtime=RuntimeConfig(kind="apptainer"), network=NetworkConfig())
        plan = DesktopPlan(request=req, session_dir=Path("/s"), workdir=Path("/w"),
                           bind_addr="10.0.0.5", web_port=40001, user="alice",
                           password=PASSWORD, encoder="nvh264enc", encoder_threads=4,
                           xorg_driver="nvidia", bus_id="PCI:0:6:0",
                           tls_cert=Path("/w/c.pem"), tls_key=Path("/w/k.pem"),
                           gpu_uuid="GPU-bbbb")
        for flavor in FLAVORS:
            kind = ImageKind(flavor, True)
            x = XFiles(Path("/w/Xauthority"), Path("/w/xorg.conf") if kind.xorg_driver else None)
            keys |= set(contract_env(plan, ":21", kind, x, "580.1"))
    return keys


@pytest.mark.parametrize("flavor", FLAVORS)
def test_header_sections_and_tag(flavor: str) -> None:
    d = parse_def(def_text(flavor))
    assert d.header["bootstrap"] == "docker"
    assert d.header["from"] == f"ghcr.io/selkies-project/nvidia-{flavor}-desktop:{{{{ TAG }}}}"
    assert set(d.order) <= VALID_SECTIONS, set(d.order) - VALID_SECTIONS
    for name in ("arguments", "labels", "environment", "post", "runscript", "startscript", "help"):
        assert name in d.sections, f"%{name} is missing"
    args = dict(line.strip().split("=", 1) for line in d.sections["arguments"].splitlines()
                if line.strip() and not line.strip().startswith("#"))
    assert args == {"TAG": "24.04"}
    # Every {{ VAR }} has a default, or `apptainer build` stops.
    assert set(BUILD_ARG.findall(def_text(flavor))) <= set(args)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_tags_match_hpcdesk_image_flavours(flavor: str) -> None:
    from hpcdesk import images

    spec = images.FLAVORS[flavor]
    assert spec.definition == f"{flavor}-desktop.def"
    assert spec.tags[0] == "24.04"  # the %arguments default
    for tag in (*spec.tags, "24.04-20251101"):
        images.parse(f"{flavor}:{tag}")
        ref = BUILD_ARG.sub(tag, parse_def(def_text(flavor)).header["from"])
        assert re.fullmatch(r"ghcr\.io/selkies-project/nvidia-(glx|egl)-desktop:[\w][\w.-]{0,127}",
                            ref), ref


@pytest.mark.parametrize("flavor", FLAVORS)
def test_labels_environment_and_scripts(flavor: str) -> None:
    d = parse_def(def_text(flavor))
    labels = dict(line.strip().split(" ", 1) for line in d.sections["labels"].splitlines()
                  if line.strip())
    assert labels["org.hpcdesk.flavor"] == flavor
    assert labels["org.hpcdesk.upstream"] == f"ghcr.io/selkies-project/nvidia-{flavor}-desktop"
    assert labels["org.hpcdesk.entrypoint"] == ENTRYPOINT
    assert f"export HPCDESK_FLAVOR={flavor}" in d.sections["environment"]
    for name in ("runscript", "startscript"):
        body = [ln.strip() for ln in d.sections[name].splitlines() if ln.strip()]
        assert body == [f'exec {ENTRYPOINT} "$@"']
    post = upstream_post(flavor)
    assert f"chmod 0755 {ENTRYPOINT}" in post and f"bash -n {ENTRYPOINT}" in post


def upstream_post(flavor: str) -> str:
    """The upstream images' %post: one line that runs the shared images/upstream-build.sh."""
    d = parse_def(def_text(flavor))
    assert "upstream-build.sh /opt/hpcdesk/upstream-build.sh" in d.sections["files"]
    ref = f"ghcr.io/selkies-project/nvidia-{flavor}-desktop:{{{{ TAG }}}}"
    assert f"sh /opt/hpcdesk/upstream-build.sh {flavor} {ref}" in d.sections["post"]
    return (IMAGES / "upstream-build.sh").read_text()


def upstream_help(flavor: str) -> str:
    """%help, plus the contract both upstream images share (images/upstream-contract.txt)."""
    d = parse_def(def_text(flavor))
    assert "upstream-contract.txt /opt/hpcdesk/CONTRACT" in d.sections["files"]
    assert "/opt/hpcdesk/CONTRACT" in d.sections["help"]
    return d.sections["help"] + (IMAGES / "upstream-contract.txt").read_text()


def test_what_the_upstream_images_share_lives_in_one_place() -> None:
    """glx-desktop.def and egl-desktop.def differ only in what is the flavour's own."""
    a, b = (def_text(f).replace(f, "FLAVOR").splitlines() for f in FLAVORS)
    differing = [(x, y) for x, y in zip(a, b, strict=False) if x != y]
    assert len(a) - len(b) in (0, 1, 2, 3) and len(differing) <= 20, differing
    for flavor in FLAVORS:
        for name in ("post", "help"):
            assert len(parse_def(def_text(flavor)).sections[name].splitlines()) <= 20, name


def test_upstream_entrypoint_writes_no_coturn_config() -> None:
    """hpcdesk always hands the entrypoint its rtc file (the in-job TURN runs beside the
    container, node/jobturn.py), so the entrypoint's own coturn writer was never reached."""
    code = "\n".join(code_lines(entrypoint_of("glx")))
    assert "turnserver" not in code and "lt-cred-mech" not in code and "TURN_MIN_PORT" not in code


def test_both_images_install_the_same_entrypoint() -> None:
    assert entrypoint_source("glx") == entrypoint_source("egl")
    ep = entrypoint_of("glx")
    assert ep.startswith("#!/bin/bash\n")
    assert not BUILD_ARG.search(ep), "the entrypoint must not contain {{ VAR }} templates"
    for flavor in FLAVORS:  # %post makes it executable and checks its syntax in the image
        post = upstream_post(flavor)
        assert f"chmod 0755 {ENTRYPOINT}" in post and f"bash -n {ENTRYPOINT}" in post


@pytest.mark.parametrize("flavor", FLAVORS)
def test_help_documents_the_contract(flavor: str) -> None:
    help_text = upstream_help(flavor)
    missing = sorted(k for k in contract_keys() if not re.search(rf"\b{k}\b", help_text))
    assert not missing, f"%help does not list {missing}"


def test_entrypoint_reads_every_contract_variable() -> None:
    code = "\n".join(code_lines(entrypoint_of("glx")))
    missing = sorted(k for k in contract_keys() if not re.search(rf"\b{k}\b", code))
    assert not missing, f"the entrypoint ignores {missing}"


def test_bash_syntax(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck(script: Path) -> None:
    require("shellcheck", package="shellcheck")
    r = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", str(script),
                        str(script.parent / "entrypoint-lib.sh")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("flavor", FLAVORS)
def test_no_sudo_download_or_etc_writes(flavor: str) -> None:
    d = parse_def(def_text(flavor))
    ep = "\n".join(code_lines(entrypoint_of(flavor)))
    build_and_run = "\n".join(code_lines(upstream_post(flavor) + d.sections["runscript"]
                                         + d.sections["startscript"]))
    for code in (ep, build_and_run):
        assert not re.search(r"\b(sudo|sudo-root|fakeroot|pkexec|su)\b(?!-)", code)
        assert not re.search(r"\b(curl|wget|nvidia-installer|nvidia-xconfig|apt-get|apt|dpkg)\b",
                             code)
        assert "NVIDIA-Linux" not in code and "download.nvidia.com" not in code
    # At run time nothing in /etc is even named (the upstream scripts write xorg.conf,
    # localtime, nginx sites there); %post writes only below /opt/hpcdesk.
    assert "/etc/" not in ep
    for target in re.findall(r"(?<![<&0-9])>>?\s*\"?([^\s\"&|;)]+)", build_and_run):
        assert target in ("/dev/null", "&2") or target.startswith("/opt/hpcdesk/"), target


def _image_code() -> dict[str, str]:
    """Every image file without its comment lines: the definitions, the upstream entrypoint
    and hpcdesk's images' files (images/debian/)."""
    files = {"upstream-entrypoint.sh": entrypoint_of("glx")}
    files |= {path.name: path.read_text() for path in sorted(IMAGES.glob("*.def"))}
    files |= {f"debian/{p.name}": p.read_text() for p in sorted((IMAGES / "debian").iterdir())}
    return {name: "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
            for name, text in files.items()}


def test_images_generate_no_x_configuration() -> None:
    """hpcdesk renders the xorg.conf (xorg_conf.py) and writes the cookie (xserver.py); the
    images only start their X server with the files they are given."""
    generators = re.compile(r"Modeline|BusID|\bcvt\b|ModeValidation|MIT-MAGIC-COOKIE|"
                            r"xauth\s+(-|add|source|generate)|od -An -N16|Section \"")
    for name, code in _image_code().items():
        found = generators.search(code)
        assert found is None, f"{name} generates X configuration: {found}"
    ep = _image_code()["upstream-entrypoint.sh"]
    assert '-config "$HPCDESK_XORG_CONF"' in ep and '-auth "$XAUTHORITY"' in ep
    debian = _image_code()["debian/entrypoint.sh"]
    assert '-config "$HPCDESK_XORG_CONF"' in debian and '-auth "$XAUTHORITY"' in debian


def test_x_servers_are_private_and_unprivileged() -> None:
    ep = "\n".join(code_lines(entrypoint_of("glx")))
    assert not re.search(r"\s-ac\b", ep), "X access control must stay on (cookie in XAUTHORITY)"
    assert "/usr/lib/xorg/Xorg" in ep and "Xorg.wrap" not in ep
    xorg = ep[ep.index("start_x Xorg"):]
    xorg = xorg[:xorg.index("\n}\n")]
    for flag in ("-config", "-noreset", "-novtswitch", "-sharevts", "-nolisten tcp", "-logfile",
                 "-auth", '"$DISPLAY"'):
        assert flag in xorg, flag
    assert 'start_x Xvfb Xvfb "$DISPLAY" -screen 0' in ep
    assert "-shmem" not in ep  # Xvfb's framebuffer in world-readable SysV shm


# --- nothing secret on a command line (static heuristic) -------------------------------------

_RESERVED = {"if", "then", "elif", "else", "while", "until", "do", "!", "{", "(", "time", "}",
             "fi", "done"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_SAFE_BUILTINS = {"[", "[[", "test", "case", "local", "declare", "typeset", "readonly", "unset",
                  "read", "return", "shift", "exit"}


def _segments(code: str) -> list[tuple[str, str]]:
    """Simple commands of `code` with the operator that follows each ('|', ';', ...)."""
    segs: list[tuple[str, str]] = []
    cur: list[str] = []
    quote = ""
    i = 0

    def cut(op: str) -> None:
        text = "".join(cur).strip()
        if text:
            segs.append((text, op))
        cur.clear()

    while i < len(code):
        c = code[i]
        if quote == "'":
            cur.append(c)
            quote = "" if c == "'" else quote
        elif c == "\\" and i + 1 < len(code):
            if code[i + 1] != "\n":
                cur.append(code[i:i + 2])
            i += 1
        elif quote == '"' and c == '"':
            cur.append(c)
            quote = ""
        elif c == "$" and code.startswith("$(", i) and not code.startswith("$((", i):
            cut(";")
            i += 1
        elif quote == '"':
            cur.append(c)
        elif c == "#" and (not cur or cur[-1][-1:].isspace()):
            while i + 1 < len(code) and code[i + 1] != "\n":
                i += 1  # a comment after a command
        elif c in "'\"":
            quote = c
            cur.append(c)
        elif c in ";\n&" or (c == ")" and not "".join(cur).rstrip().endswith(("in", "|"))):
            cut(";")
        elif c == "|":
            if code.startswith("||", i):
                cut(";")
                i += 1
            else:
                cut("|")
        else:
            cur.append(c)
        i += 1
    cut(";")
    return segs


def _words(segment: str) -> list[str]:
    return re.findall(r"""(?:[^\s'"]|'[^']*'|"(?:\\.|[^"\\])*")+""", segment)


def _has_secret(word: str) -> bool:
    unquoted = re.sub(r"\$?'[^']*'", "''", word)  # '...' and $'...' are literal
    return any(re.search(rf"\$\{{?#?{name}\b", unquoted) for name in SECRETS)


def secret_on_argv(script: str) -> list[str]:
    """Commands that would put a secret into an argv, print it, or export it to every child."""
    bad: list[str] = []
    for segment, op in _segments("\n".join(code_lines(script))):
        words = _words(segment)
        while words and words[0] in _RESERVED:
            words = words[1:]
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]  # NAME=$secret before a command: that command's environment only
        if not words or not any(_has_secret(w) for w in words):
            continue
        cmd = words[0]
        if cmd in _SAFE_BUILTINS:
            continue
        if cmd in ("printf", "echo") and (op == "|" or any(
                re.match(r"\d?>>?[^&]", w) and w.lstrip("0123456789>") not in ("", "/dev/stdout",
                                                                                "/dev/stderr")
                for w in words)):
            continue  # a builtin writing into a pipe or a file
        bad.append(segment)
    return bad


@pytest.mark.parametrize("snippet", [
    'htpasswd -bc "$f" "$user" "$password"',
    'openssl passwd -6 "$password"',
    'echo "$PASSWD"',
    "printf '%s\\n' \"$password\"",
    'export SELKIES_BASIC_AUTH_PASSWORD=$password',
    'kasmvncserver -password "${SELKIES_BASIC_AUTH_PASSWORD}" &',
    'hash=$(openssl passwd -stdin "$password")',
    'selkies-gstreamer \\\n    --basic_auth_password="$password" &',
    'X=1 cmd --turn "$turn_secret"',
    '[ -n "$password" ] && curl -u "u:$password" http://x/',
])
def test_secret_heuristic_catches(snippet: str) -> None:
    assert secret_on_argv(snippet)


@pytest.mark.parametrize("snippet", [
    "printf '%s\\n' \"$password\" | openssl passwd -6 -stdin",
    "printf '%s\\n%s\\n' \"$password\" \"$password\" | kasmvncpasswd -u u -ow f",
    'SELKIES_BASIC_AUTH_PASSWORD=$password \\\n    selkies-gstreamer --port=1 &',
    '[ -n "$password" ] || password=${SELKIES_BASIC_AUTH_PASSWORD:-${PASSWD:-}}',
    "case $password in *$'\\n'*) die one-line ;; esac",
    'cat >"$f" <<EOF\nuser=selkies:$turn_password\nEOF',
    "bash -c 'exec \"$@\"' _ selkies",
    "printf '%s' \"$password\" >\"$work/pw\"",
    "true  # the user's \"$password\" is never passed here",
])
def test_secret_heuristic_allows(snippet: str) -> None:
    assert secret_on_argv(snippet) == []


def test_entrypoint_puts_no_secret_on_a_command_line() -> None:
    assert secret_on_argv(entrypoint_of("glx")) == []


# --- the entrypoint's functions ------------------------------------------------------------

def bash(script: Path, body: str, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `body` after sourcing the entrypoint (main() only runs when executed)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["bash", "-c", f'source "$1"\n{body}', "bash", str(script)], env=full_env,
                          capture_output=True, text=True, check=check, timeout=60)


def test_missing_x_driver_names_the_fix(script: Path, tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    r = bash(script, f'XORG_MODULES="{modules}"; check_glx_driver', check=False,
             env={"NVIDIA_DRIVER_VERSION": "580.159.04"})
    assert r.returncode != 0
    assert "never downloads" in r.stderr and "EGL flavour" in r.stderr
    assert "580.159.04" in r.stderr and "nvidia_drv.so" in r.stderr
    for rel in ("drivers/nvidia_drv.so", "extensions/libglxserver_nvidia.so"):
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_bytes(b"\x7fELF")
    bash(script, f'XORG_MODULES="{modules}"; check_glx_driver')


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '%s\\n' '0, GPU-aaaa' '1, GPU-bbbb'\n")
    smi.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, "0 2"),
    ({"HPCDESK_GPU_UUID": "GPU-bbbb"}, "1 2"),
    ({"NVIDIA_VISIBLE_DEVICES": "GPU-bbbb,GPU-aaaa"}, "1 2"),
    ({"NVIDIA_VISIBLE_DEVICES": "1"}, "1 2"),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, "0 2"),
])
def test_gpu_selection(script: Path, fake_nvidia_smi: dict[str, str], extra: dict[str, str],
                       expected: str) -> None:
    env = {**fake_nvidia_smi, "HPCDESK_GPU_UUID": "", "NVIDIA_VISIBLE_DEVICES": "", **extra}
    r = bash(script, 'select_gpu; echo "$gpu_index $gpu_count"', env=env)
    assert r.stdout.strip() == expected


def test_gpu_not_visible_is_an_error(script: Path, fake_nvidia_smi: dict[str, str]) -> None:
    env = {**fake_nvidia_smi, "HPCDESK_GPU_UUID": "GPU-cccc"}
    r = bash(script, "select_gpu", env=env, check=False)
    assert r.returncode != 0 and "not visible" in r.stderr


def test_nginx_config_is_valid(script: Path, tmp_path: Path) -> None:
    require("/usr/sbin/nginx", package="nginx")
    require("openssl", package="openssl")
    nginx = "/usr/sbin/nginx"
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=t", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    for https in ("false", "true"):
        work = tmp_path / f"work-{https}"
        work.mkdir()
        r = bash(script, f'work="{work}" bind_addr=127.0.0.1 web_port={free_port()} user=alice\n'
                         f'https={https} tls_cert="{cert}" tls_key="{key}"\n'
                         f'password="{PASSWORD}"; make_htpasswd "$work/htpasswd"\n'
                         f'write_nginx_conf "$work/nginx.conf" 8081\n'
                         f'"{nginx}" -t -e stderr -p "$work/nginx/" -c "$work/nginx.conf"',
                 check=False)
        assert r.returncode == 0, r.stderr
        assert PASSWORD not in (work / "htpasswd").read_text()
        assert ("ssl_certificate" in (work / "nginx.conf").read_text()) == (https == "true")


# --- the whole EGL flow: real Xvfb and nginx, stand-ins for KDE, D-Bus and selkies --------------

SELKIES_STUB = '''\
"""selkies-gstreamer stand-in: basic auth on --addr:--port; records argv and environment."""
import base64, http.server, json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
env = dict(os.environ)
secret = env.pop("SELKIES_BASIC_AUTH_PASSWORD", "")
with open(os.environ["STUB_OUT"] + "/selkies.json", "w") as fh:
    json.dump({"argv": sys.argv, "env": env, "has_password": bool(secret)}, fh)
token = "Basic " + base64.b64encode(
    (env["SELKIES_BASIC_AUTH_USER"] + ":" + secret).encode()).decode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == token
        self.send_response(200 if ok else 401)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((args["addr"], int(args["port"])), Handler).serve_forever()
'''
DBUS_LAUNCH_STUB = """\
setsid sleep 600 </dev/null >/dev/null 2>&1 &
echo "DBUS_SESSION_BUS_ADDRESS=unix:path=$STUB_OUT/bus,guid=0"
echo "DBUS_SESSION_BUS_PID=$!"
echo "$!" >"$STUB_OUT/dbus.pid"
"""
DESKTOP_STUB = """\
xdpyinfo | sed -n 's/^ *dimensions: *\\([0-9x]*\\) pixels.*/\\1/p' >"$STUB_OUT/screen"
env >"$STUB_OUT/desktop.env"
exec sleep 600
"""


def _tree(root: int) -> list[int]:
    from hpcdesk.node.procs import descendants

    return descendants(root)


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    return ""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@dataclass
class Desktop:
    proc: subprocess.Popen[str]
    out: Path
    tmp: Path
    port: int
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def egl_desktop(script: Path, tmp_path: Path) -> Iterator[Desktop]:
    for tool, package in (("Xvfb", "xvfb"), ("xdpyinfo", "x11-utils"), ("openssl", "openssl"),
                          ("setsid", "util-linux"), ("/usr/sbin/nginx", "nginx")):
        require(tool, package=package)
    nginx_dirs = f"{os.environ['PATH']}:/usr/sbin:/sbin"
    from hpcdesk.node.displays import in_use

    stubs, out, tmp, home, run = (tmp_path / n for n in ("bin", "out", "tmp", "home", "run"))
    for d in (stubs, out, tmp, home):
        d.mkdir()
    for name, body, interp in (("selkies-gstreamer", SELKIES_STUB, sys.executable),
                               ("dbus-launch", DBUS_LAUNCH_STUB, "/bin/sh"),
                               ("startplasma-x11", DESKTOP_STUB, "/bin/sh")):
        (stubs / name).write_text(f"#!{interp}\n{body}")
        (stubs / name).chmod(0o755)
    from hpcdesk.node.xserver import write_x_files

    display = next(n for n in range(600, 999) if not in_use(n))
    port = free_port()
    x = write_x_files(tmp_path, None)  # the EGL flavour's Xvfb needs only the cookie
    env = {
        "XAUTHORITY": str(x.xauthority),
        "PATH": f"{stubs}:{nginx_dirs}", "HOME": str(home), "TMPDIR": str(tmp),
        "STUB_OUT": str(out), "HPCDESK_FLAVOR": "egl", "DISPLAY": f":{display}",
        "DISPLAY_SIZEW": "1280", "DISPLAY_SIZEH": "720", "DISPLAY_REFRESH": "60",
        "DISPLAY_DPI": "96", "DISPLAY_CDEPTH": "24", "VIDEO_PORT": "DFP", "TZ": "Etc/UTC",
        "SELKIES_ENCODER": "x264enc", "SELKIES_VIDEO_BITRATE": "8000",
        "SELKIES_FRAMERATE": "30", "SELKIES_AUDIO_BITRATE": "128000",
        "SELKIES_AUDIO_ENABLED": "false", "SELKIES_ENABLE_RESIZE": "false",
        "SELKIES_ENABLE_BASIC_AUTH": "true", "SELKIES_BASIC_AUTH_USER": "alice",
        "SELKIES_ENABLE_HTTPS": "false", "NGINX_PORT": str(port),
        "SELKIES_PORT": str(free_port()), "SELKIES_METRICS_HTTP_PORT": "0",
        "KASMVNC_ENABLE": "false", "KASMVNC_THREADS": "2", "HPCDESK_INTERFACE": "selkies",
        "HPCDESK_WEB_PORT": str(port), "HPCDESK_BIND_ADDR": "127.0.0.1",
        "XDG_RUNTIME_DIR": str(run), "PASSWD": PASSWORD,
        "SELKIES_BASIC_AUTH_PASSWORD": PASSWORD,
    }
    log = tmp_path / "entrypoint.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(script)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    desktop = Desktop(proc, out, tmp, port, log)
    yield desktop
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((out / "dbus.pid").read_text()), signal.SIGKILL)


def _wait_ready(desktop: Desktop, timeout: float = 30) -> None:
    from hpcdesk.node.health import http_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert desktop.proc.poll() is None, desktop.log.read_text()
        if http_status("127.0.0.1", desktop.port, "alice", PASSWORD) == 200:
            return
        time.sleep(0.2)
    pytest.fail("the desktop did not become ready:\n" + desktop.log.read_text())


def _survivors(pids: list[int], timeout: float = 30) -> list[int]:
    """The pids still running once they had `timeout` seconds to finish exiting."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def test_egl_desktop_end_to_end(egl_desktop: Desktop) -> None:
    from hpcdesk.node.health import http_status

    _wait_ready(egl_desktop)
    # hpcdesk's health gate: 200 with the credentials, 401 without or with a wrong password.
    assert http_status("127.0.0.1", egl_desktop.port, None, None) == 401
    assert http_status("127.0.0.1", egl_desktop.port, "alice", "wrong") == 401
    assert (egl_desktop.out / "screen").read_text().strip() == "1280x720"

    tree = _tree(egl_desktop.proc.pid)
    assert tree
    leaks = [(pid, _cmdline(pid)) for pid in tree if PASSWORD in _cmdline(pid)]
    assert not leaks, leaks
    desktop_env = (egl_desktop.out / "desktop.env").read_text()
    assert PASSWORD not in desktop_env  # the desktop's programs never inherit it

    rec = json.loads((egl_desktop.out / "selkies.json").read_text())
    assert rec["has_password"]
    senv = rec["env"]
    # Only the address and port on the command line; everything else in its environment.
    assert rec["argv"][1:] == ["--addr=127.0.0.1", f"--port={senv['SELKIES_PORT']}"]
    assert senv["SELKIES_ENABLE_HTTPS"] == "false"  # nginx terminates TLS
    assert senv["SELKIES_ENABLE_BASIC_AUTH"] == "true" and senv["SELKIES_BASIC_AUTH_USER"] == "alice"
    assert senv["SELKIES_ENCODER"] == "x264enc" and senv["SELKIES_VIDEO_BITRATE"] == "8000"
    assert senv["SELKIES_ENABLE_METRICS_HTTP"] == "false"
    assert "PASSWD" not in senv
    work = Path(senv["SELKIES_JSON_CONFIG"]).parent
    assert work.parent == egl_desktop.tmp
    rtc = json.loads(Path(senv["SELKIES_RTC_CONFIG_JSON"]).read_text())
    assert all(u.startswith("stun:") for s in rtc["iceServers"] for u in s["urls"])
    assert (work / "htpasswd").stat().st_mode & 0o077 == 0

    dbus_pid = int((egl_desktop.out / "dbus.pid").read_text())
    assert egl_desktop.stop() == 128 + signal.SIGTERM
    survivors = _survivors([*tree, dbus_pid])
    assert not survivors, [(p, _cmdline(p)) for p in survivors]
    assert not work.exists(), "the private work directory is removed"


def test_egl_desktop_stops_when_the_streamer_dies(egl_desktop: Desktop) -> None:
    _wait_ready(egl_desktop)
    tree = _tree(egl_desktop.proc.pid)
    streamer = next(p for p in tree if "selkies-gstreamer" in _cmdline(p)
                    and "bash" not in _cmdline(p).split()[0])
    os.kill(streamer, signal.SIGKILL)
    assert egl_desktop.proc.wait(timeout=20) == 1
    assert "selkies-gstreamer" in egl_desktop.log.read_text()
    assert not _survivors(tree)


@pytest.mark.parametrize(("env", "message"), [
    ({"PASSWD": "", "SELKIES_BASIC_AUTH_PASSWORD": ""}, "no password"),
    ({"PASSWD": "mypasswd", "SELKIES_BASIC_AUTH_PASSWORD": ""}, "default password"),
    ({"DISPLAY": "localhost:3"}, "DISPLAY must be :N"),
    ({"NGINX_PORT": "", "HPCDESK_WEB_PORT": ""}, "NGINX_PORT"),
    ({"HPCDESK_FLAVOR": "wayland"}, "HPCDESK_FLAVOR"),
    ({"SELKIES_ENCODER": "h264enc;x"}, "SELKIES_ENCODER"),
    ({"VIDEO_PORT": "HDMI-0"}, "VIDEO_PORT"),
])
def test_contract_errors_stop_before_starting_anything(script: Path, tmp_path: Path,
                                                       env: dict[str, str], message: str) -> None:
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
            "HPCDESK_FLAVOR": "egl", "DISPLAY": ":900", "NGINX_PORT": "40001",
            "SELKIES_BASIC_AUTH_PASSWORD": PASSWORD}
    r = subprocess.run([str(script)], env={**base, **env}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"


def test_glx_without_gpu_names_the_alternatives(script: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "HPCDESK_FLAVOR": "glx", "DISPLAY": ":900", "NGINX_PORT": "40001",
           "SELKIES_BASIC_AUTH_PASSWORD": PASSWORD}
    if shutil.which("nvidia-smi", path=env["PATH"]):
        skip_with_gpu("the entrypoint would find nvidia-smi")
    r = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "needs an NVIDIA GPU" in r.stderr and "egl" in r.stderr


def test_debian_images_start_selkies_first_and_the_session_last() -> None:
    """Start time (issue 21): Selkies' imports run while Xorg starts (held off the display by
    its app-ready file until X takes clients), the desktop session starts once Selkies
    listens; the password and master token only ever reach Selkies' own environment."""
    ep = "\n".join(code_lines((IMAGES / "debian/entrypoint.sh").read_text()))
    selkies = ep.index("/opt/hpcdesk/venv/bin/selkies &")
    xorg = ep.index("/usr/lib/xorg/Xorg")
    ready = ep.index(': > "$SELKIES_APP_READY_FILE"')
    probe = ep.index('/dev/tcp/$probe/$port')
    session = ep.index('dbus-run-session -- "${session_cmd[@]}" &')
    assert "SELKIES_APP_WAIT_READY=true" in ep[:selkies]
    assert selkies < xorg < ep.index("wait_x", xorg) < ready < probe < session
    assert "SELKIES_MASTER_TOKEN=$token /opt/hpcdesk/venv/bin/selkies &" in ep
    assert "unset PASSWD PASSWORD SELKIES_BASIC_AUTH_PASSWORD SELKIES_MASTER_TOKEN" in ep
