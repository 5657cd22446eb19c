"""Where PyPI Selkies' web client lives on the node, so Selkies can serve it in place.

Selkies 2.x copies its packaged web client (about 11 MB, hundreds of files) into a fresh
temporary directory on every start unless ``web_root`` names a directory with an
``index.html``; on a busy 2-core node the copy alone took 0.2-1.5 s of the desktop's start.
The files are the installed package's own and never change at run time, so serving them from
where pip put them is the same content without the copy. Inside hpcdesk's images, whose
files come from a squashfuse mount, the copy cost 1.4 s of every start (py-spy, quiet 2-core
machine).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hpcdesk.images import web_root_in_image

__all__ = ["packaged_web_root", "web_root_setting"]


def packaged_web_root(selkies: str) -> Path | None:
    """The ``selkies/selkies_web`` directory next to the Python that runs ``selkies``.

    ``selkies`` is the command (a pip console script: its first line names its Python);
    the package is looked up in that Python's environment. None when it is not found.
    """
    script = selkies if "/" in selkies else shutil.which(selkies)
    if not script:
        return None
    try:
        with open(script, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    interpreter = Path(first[2:].decode(errors="replace").split()[0])
    prefix = interpreter.parent.parent
    for site in sorted(prefix.glob("lib/python3*/site-packages/selkies/selkies_web"),
                       reverse=True):
        if (site / "index.html").is_file():
            return site
    return None


def web_root_setting(configured: str, selkies: str = "", image: str | None = None) -> str | None:
    """SELKIES_WEB_ROOT for ``runtime.selkies_web_root``: ``auto`` serves the packaged
    client in place (the host's Selkies: found next to the `selkies` command; one of
    hpcdesk's images: where the image has it, by the `image`'s name), None if it is not
    found: Selkies then copies as usual; ``copy`` keeps Selkies' own default, anything else
    is a directory given by the site."""
    if configured == "copy":
        return None
    if configured == "auto":
        if image is not None:
            return web_root_in_image(image)
        found = packaged_web_root(selkies)
        return str(found) if found else None
    return configured
