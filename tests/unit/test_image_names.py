"""Image names are derived from the recipe's content: the definition and every file its %files
section copies in (hpcdesk's images: the entrypoint, the websockify plugin, the shared build
script), so a changed entrypoint is a new image, never a stale cached one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hpcdesk import images, resources

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = tmp_path / "images"
    shutil.copytree(ROOT / "images", tree)
    real = resources.data_dir
    monkeypatch.setattr(resources, "data_dir",
                        lambda name: tree if name == "images" else real(name))
    return tree


@pytest.mark.parametrize("flavor", ["debian", "kde"])
def test_hpcdesk_images_are_built_from_real_files(flavor: str) -> None:
    f, _ = images.parse(flavor)
    rel = {str(p.relative_to(ROOT / "images")) for p in images.recipe_files(f)}
    assert {"debian/entrypoint.sh", "debian/hpcdesk_wsauth.py", "debian/build.sh",
            "debian/novnc-index.html", "entrypoint-lib.sh", f.definition} <= rel
    text = images.definition_path(f).read_text()
    assert "<<" not in text, "no file of the image is a heredoc in the definition"


@pytest.mark.parametrize("flavor", ["debian", "kde"])
@pytest.mark.parametrize("changed", ["debian/entrypoint.sh", "debian/hpcdesk_wsauth.py",
                                     "debian/build.sh", "entrypoint-lib.sh"])
def test_a_changed_file_is_a_new_image(image_tree: Path, flavor: str, changed: str) -> None:
    f, tag = images.parse(flavor)
    before = images.image_name(f, tag)
    with open(image_tree / changed, "a") as fh:
        fh.write("\n# changed\n")
    after = images.image_name(f, tag)
    assert after != before and after.startswith(f"{flavor}-bookworm-")


def test_the_two_images_differ_and_share_their_files() -> None:
    names = {images.image_name(*images.parse(f)) for f in ("debian", "kde")}
    assert len(names) == 2
    shared = [{p.name for p in images.recipe_files(images.FLAVORS[f])} for f in ("debian", "kde")]
    assert shared[0] - {"debian-desktop.def"} == shared[1] - {"kde-desktop.def"}


def test_a_missing_file_is_a_clear_error(image_tree: Path) -> None:
    (image_tree / "debian/entrypoint.sh").unlink()
    with pytest.raises(images.ImageError, match="entrypoint.sh, used by the kde recipe"):
        images.image_name(*images.parse("kde"))


@pytest.mark.parametrize(("spec", "upstream"), [
    ("debian", False), ("kde", False), ("kde:bookworm", False), ("glx", True), ("egl:22.04", True),
    ("/apps/kde-bookworm-1.sif", False), ("/apps/glx-24.04-1.sif", True), ("", False)])
def test_which_images_are_upstream(spec: str, upstream: bool) -> None:
    assert images.is_upstream(spec) is upstream


def test_the_compression_is_part_of_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image compressed another way is another file (start time depends on it), never a
    cached one of the old kind."""
    f, tag = images.parse("kde")
    before = images.image_name(f, tag)
    monkeypatch.setattr(images, "SQUASHFS_ARGS", ("-comp", "gzip"))
    assert images.image_name(f, tag) != before
