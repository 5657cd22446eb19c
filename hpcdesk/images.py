"""Desktop image flavours, their definition files and content-derived image names.

Shared by `hpcdesk image build` (login side) and the apptainer runtime (node side).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hpcdesk import resources


@dataclass(frozen=True)
class Flavor:
    name: str
    definition: str          # file in images/
    tags: tuple[str, ...]    # allowed tags; the first is the default
    description: str
    upstream: bool = False   # a selkies-project image (ghcr.io), not one hpcdesk builds


FLAVORS = {
    "debian": Flavor("debian", "debian-desktop.def", ("bookworm",),
                     "Debian + Xfce + Selkies (PyPI) + TigerVNC/noVNC; builds offline from the "
                     "Debian and PyPI registries"),
    "kde": Flavor("kde", "kde-desktop.def", ("bookworm",),
                  "Debian + KDE Plasma (Dolphin, Konsole, KWrite) + Selkies (PyPI) + "
                  "TigerVNC/noVNC; builds offline from the Debian and PyPI registries"),
    "glx": Flavor("glx", "glx-desktop.def", ("24.04", "22.04", "20.04"),
                  "selkies-project nvidia-glx-desktop (KDE, own Xorg on the GPU, Selkies or "
                  "KasmVNC), adapted for Apptainer", upstream=True),
    "egl": Flavor("egl", "egl-desktop.def", ("24.04", "22.04", "20.04"),
                  "selkies-project nvidia-egl-desktop (KDE on Xvfb + VirtualGL/EGL; shares a "
                  "GPU), adapted for Apptainer", upstream=True),
}
_DATED_TAG = re.compile(r"^(24\.04|22\.04|20\.04)-\d{8}\d*$")  # persistent dated upstream tags


class ImageError(ValueError):
    """A wrong flavour or tag, or an image that has not been built."""


def parse(spec: str) -> tuple[Flavor, str]:
    """'glx', 'glx:22.04' or 'egl:24.04-20251101' -> (flavour, tag)."""
    name, _, tag = spec.partition(":")
    flavor = FLAVORS.get(name)
    if flavor is None:
        raise ImageError(f"unknown image flavour {name!r}; choose one of {', '.join(FLAVORS)}")
    tag = tag or flavor.tags[0]
    if tag not in flavor.tags and not (flavor.upstream and _DATED_TAG.match(tag)):
        raise ImageError(f"tag {tag!r} is not available for {flavor.name}; use one of "
                         f"{', '.join(flavor.tags)}" + (" or a dated tag such as 24.04-20251101"
                                                        if flavor.upstream else ""))
    return flavor, tag


def definition_path(flavor: Flavor) -> Path:
    return resources.data_dir("images") / flavor.definition


def recipe_files(flavor: Flavor) -> list[Path]:
    """The definition file and every file its %files section copies in (relative to it): the
    entrypoints and build scripts are part of what makes an image."""
    definition = definition_path(flavor)
    try:
        text = definition.read_text()
    except OSError:
        raise ImageError(f"the {flavor.name} definition file {definition} is missing from "
                         "this installation") from None
    files, section = [definition], ""
    for line in text.splitlines():
        if line.startswith("%"):
            section = line.split()[0]
        elif section == "%files" and line.strip() and not line.lstrip().startswith("#"):
            files.append(definition.parent / line.split()[0])
    return files


# How every image hpcdesk builds is compressed (apptainer build --mksquashfs-args). Unprivileged
# Apptainer reads a SIF through squashfuse, and each desktop is a new mount: no page cache
# survives from the last one, so every block the start reads (Xorg, Python, Selkies) is
# decompressed again. On the dev cluster (2-core node, same run, KDE image) gzip, apptainer's
# default, took the image's Xorg 1.2 s and its Selkies import 2.2-2.7 s; lz4 0.5 s and
# 1.4-1.7 s (submit -> URL median 3.65 s -> 2.55 s; zstd -Xcompression-level 3: 2.73 s). The
# file is about a third larger (KDE: 602 -> 814 MB), and mksquashfs takes seconds instead of
# minutes. Kernel squashfs (setuid installations) reads lz4 since Linux 3.19.
SQUASHFS_ARGS = ("-comp", "lz4")


def image_name(flavor: Flavor, tag: str) -> str:
    """Name derived from the recipe's content, the tag and the compression: a changed recipe,
    a new file."""
    h = hashlib.sha256()
    for path in recipe_files(flavor):
        try:
            rel = path.relative_to(definition_path(flavor).parent)
            h.update(str(rel).encode() + b"\0" + path.read_bytes())
        except OSError:
            raise ImageError(f"{path}, used by the {flavor.name} recipe, is missing") from None
    h.update(tag.encode())
    h.update(b"\0" + " ".join(SQUASHFS_ARGS).encode())
    digest = h.hexdigest()
    return f"{flavor.name}-{tag}-{digest[:16]}.sif"


# hpcdesk's own images install Selkies into /opt/hpcdesk/venv with Debian's python3 of the
# release they are built from (images/debian/build.sh).
IMAGE_VENV = "/opt/hpcdesk/venv"
RELEASE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
_OWN_IMAGE = re.compile(r"^(?:debian|kde)-([a-z]+)-[0-9a-f]{16}\.sif$")


def web_root_in_image(image: str) -> str | None:
    """Where the Selkies web client lies inside one of hpcdesk's own images, from the image's
    name (FLAVOR-RELEASE-HASH.sif, as `image_name` makes it); None for any other name."""
    found = _OWN_IMAGE.match(Path(image).name)
    python = RELEASE_PYTHON.get(found.group(1)) if found else None
    if python is None:
        return None
    return f"{IMAGE_VENV}/lib/python{python}/site-packages/selkies/selkies_web"


def is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith(".sif")


def is_upstream(spec: str) -> bool:
    """Whether runtime.image names a selkies-project image (glx, egl) rather than one of
    hpcdesk's own (debian, kde: hpcdesk's entrypoint, token mode, every Selkies setting)."""
    if is_path(spec):
        name = Path(spec).name.lower()
        return "glx" in name or "egl" in name
    flavor = FLAVORS.get(spec.partition(":")[0])
    return bool(flavor and flavor.upstream)


def resolve_image(spec: str, image_dir: str) -> str:
    """A runnable image path for runtime.image (a path, or a flavour built into image_dir)."""
    if is_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ImageError(f"image {path} does not exist on this node")
        return str(path)
    flavor, tag = parse(spec)
    path = Path(image_dir).expanduser() / image_name(flavor, tag)
    if not path.exists():
        raise ImageError(f"image {spec!r} has not been built ({path} is missing)",)
    from hpcdesk.trust import UntrustedPath, check_image

    try:
        check_image(path)
    except UntrustedPath as exc:
        raise ImageError(f"{exc.message}; {exc.hint}") from None
    return str(path)
