"""`hpcdesk ood generate`: write a complete OOD batch connect app for one site.

The app's files are rendered from templates/ (jinja2, StrictUndefined); values that enter a
shell pass `shq`, values that enter Ruby or YAML pass JSON's string quoting.
"""

from __future__ import annotations

import json
import shlex
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from hpcdesk import __version__
from hpcdesk.config import LoadedConfig
from hpcdesk.errors import UsageError
from hpcdesk.login.jobscript import agent_argv
from hpcdesk.ood.form import FIELDS, check, offer, portal_warnings, route_uri
from hpcdesk.quoting import shq

TEMPLATES = Path(__file__).resolve().parent / "templates"
# template -> file in the app
FILES = {
    "manifest.yml.j2": "manifest.yml",
    "form.yml.j2": "form.yml",
    "submit.yml.erb.j2": "submit.yml.erb",
    "before.sh.erb.j2": "template/before.sh.erb",
    "script.sh.erb.j2": "template/script.sh.erb",
    "after.sh.erb.j2": "template/after.sh.erb",
    "view.html.erb.j2": "view.html.erb",
}
EXECUTABLE = {"template/script.sh.erb"}


def ruby_string(value: object) -> str:
    """A Ruby double-quoted string literal: JSON's escaping, plus '#' (no interpolation)."""
    return json.dumps(str(value)).replace("#", "\\#")


def yaml_string(value: object) -> str:
    """A YAML double-quoted scalar (JSON strings are YAML)."""
    return json.dumps(str(value))


# What connection.yml holds (OOD's create_yml writes these names; the view reads them).
CONN_PARAMS = ("token", "hpcdesk_session", "hpcdesk_node", "hpcdesk_resolution",
               "hpcdesk_encoder", "hpcdesk_encoder_note", "hpcdesk_ends")


@dataclass
class Generated:
    out: Path
    files: list[str]
    warnings: list[str]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - YAML, Ruby and shell: each value has its own filter
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(q=shq, ruby=ruby_string, yaml=yaml_string)
    return env


def generate(loaded: LoadedConfig, site_arg: str, out: Path, cluster: str | None = None,
             hpcdesk_command: str | None = None, force: bool = False) -> Generated:
    cfg = loaded.config
    # An OOD session as the form would make it must be valid: token mode needs Selkies 2.x
    # (the host runtime, or one of hpcdesk's images).
    check(site_arg, {})
    off = offer(cfg)
    if not off.partitions:
        raise UsageError("the form needs at least one partition: set ood.partitions or "
                         "scheduler.partition in the site file")
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} exists and is not empty", hint="pass --force to overwrite")
    try:
        argv = shlex.split(hpcdesk_command) if hpcdesk_command else agent_argv(cfg)
    except ValueError as exc:
        raise UsageError(f"--hpcdesk {hpcdesk_command!r}: {exc}") from None
    if not argv:
        raise UsageError("--hpcdesk: empty command")
    context = {
        "version": __version__, "site": cfg.name, "site_arg": site_arg,
        "title": cfg.ood.title, "cluster": cluster or cfg.scheduler.cluster or cfg.name,
        "fields": FIELDS, "offer": off, "route": route_uri(cfg), "hpcdesk_argv": argv,
        "conn_params": CONN_PARAMS,
        "setup": cfg.runtime.setup,
    }
    env = _environment()
    (out / "template").mkdir(parents=True, exist_ok=True)
    written = []
    for template, name in FILES.items():
        path = out / name
        path.write_text(env.get_template(template).render(**context))
        path.chmod(0o755 if name in EXECUTABLE else 0o644)
        written.append(name)
    (out / "icon.png").write_bytes(icon_png())
    (out / "icon.png").chmod(0o644)
    written.append("icon.png")
    return Generated(out, written, [f"{what}; {fix}" for what, fix in portal_warnings(cfg)])


def icon_png(size: int = 64) -> bytes:
    """The app's icon: a monitor (dark frame, green screen, stand), drawn as an RGBA PNG."""
    frame, screen, clear = (40, 44, 52, 255), (19, 168, 107, 255), (0, 0, 0, 0)
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter: none
        for x in range(size):
            in_frame = 4 <= x < size - 4 and 8 <= y < size - 18
            in_screen = 8 <= x < size - 8 and 12 <= y < size - 22
            in_stand = (size // 2 - 4 <= x < size // 2 + 4 and size - 18 <= y < size - 10) or \
                (size // 2 - 14 <= x < size // 2 + 14 and size - 10 <= y < size - 6)
            px = screen if in_screen else frame if in_frame or in_stand else clear
            row.extend(px)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))
