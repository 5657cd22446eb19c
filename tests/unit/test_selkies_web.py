"""Selkies' web client is served from the installed package, found from the command's Python."""

from __future__ import annotations

from pathlib import Path

from hpcdesk.node.selkies_web import packaged_web_root, web_root_setting


def _venv(tmp_path: Path, with_index: bool = True) -> Path:
    web = tmp_path / "venv/lib/python3.11/site-packages/selkies/selkies_web"
    web.mkdir(parents=True)
    if with_index:
        (web / "index.html").write_text("<html></html>")
    script = tmp_path / "venv/bin/selkies"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{tmp_path}/venv/bin/python3\nimport selkies\n")
    return script


def test_found_next_to_the_scripts_python(tmp_path: Path) -> None:
    script = _venv(tmp_path)
    want = tmp_path / "venv/lib/python3.11/site-packages/selkies/selkies_web"
    assert packaged_web_root(str(script)) == want
    assert web_root_setting("auto", str(script)) == str(want)


def test_copy_keeps_selkies_default_and_a_path_is_passed_on(tmp_path: Path) -> None:
    script = _venv(tmp_path)
    assert web_root_setting("copy", str(script)) is None
    assert web_root_setting("/srv/selkies-web", str(script)) == "/srv/selkies-web"


def test_not_found_leaves_selkies_to_copy(tmp_path: Path) -> None:
    assert web_root_setting("auto", str(_venv(tmp_path, with_index=False))) is None
    binary = tmp_path / "selkies-bin"
    binary.write_bytes(b"\x7fELF")
    assert packaged_web_root(str(binary)) is None
    assert packaged_web_root(str(tmp_path / "missing")) is None
    assert packaged_web_root("no-such-selkies-command-h14") is None


def test_hpcdesks_images_are_served_from_their_own_client() -> None:
    """Inside hpcdesk's images (named FLAVOR-RELEASE-HASH.sif) Selkies serves the client in
    place too: the path is the image's venv of Debian's python3 for that release."""
    want = "/opt/hpcdesk/venv/lib/python3.11/site-packages/selkies/selkies_web"
    for image in ("/var/cache/hpcdesk/images/kde-bookworm-e43d2ece670d0dec.sif",
                  "debian-bookworm-69082acaaf9a68bc.sif"):
        assert web_root_setting("auto", image=image) == want
    assert web_root_setting("copy", image="kde-bookworm-e43d2ece670d0dec.sif") is None
    assert web_root_setting("/srv/w", image="kde-bookworm-e43d2ece670d0dec.sif") == "/srv/w"
    # Another image, or an unknown release: Selkies keeps its own default (it copies).
    for image in ("/sites/own-desktop.sif", "kde-sid-e43d2ece670d0dec.sif", "kde-bookworm.sif"):
        assert web_root_setting("auto", image=image) is None
