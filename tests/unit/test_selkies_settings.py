"""The one settings -> Selkies mapping (hpcdesk/node/selkies_settings.py): for every desktop
setting, the Selkies in hpcdesk's images is handed the same value as the host runtime's.

The cluster test tests/cluster/test_image_settings.py reads the environment of the Selkies
process running inside the image; this one covers every value of every setting, cheaply."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.runtime.apptainer import build_invocation
from hpcdesk.node.selkies_settings import SECRETS, image_env, selkies_env
from hpcdesk.node.xserver import XFiles
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig

IMAGES = ("/img/debian-bookworm-0123.sif", "/img/kde-bookworm-4567.sif")
# Settings that are not Selkies settings: the X server's (they reach the xorg.conf, the same
# generator for both runtimes), the web interface, HTTPS files, the user name.
NOT_SELKIES = {"interface", "width", "height", "refresh", "depth", "video_port", "timezone",
               "https", "https_cert", "https_key", "user"}
# Settings the agent turns into plan values first (encoder -> the probed encoder, auth ->
# a master token, url_path -> the filled-in path): test_plan_settings_reach_the_image_too.
# audio -> plan.audio (and policy.microphone -> plan.microphone): on only when the session's
# sound server runs (node/sound.py): test_sound_settings_reach_the_image_too.
VIA_PLAN = {"encoder", "auth", "url_path", "audio"}


def _values(field: dataclasses.Field[Any]) -> list[Any]:
    """Non-default values worth trying for one DesktopConfig field."""
    hint = typing.get_type_hints(DesktopConfig)[field.name]
    if typing.get_origin(hint) is typing.Literal:
        return [v for v in typing.get_args(hint) if v != field.default]
    if hint is bool:
        return [not field.default]
    if hint is int:
        lo, hi = field.metadata.get("min", 1), field.metadata.get("max", 10**9)
        return [max(lo, field.default // 2), min(hi, field.default * 2)]
    if field.name == "url_path":
        return ["/node/{host}/{port}/", "/rnode/x/"]
    if field.name == "allowed_origins":
        return [["https://ondemand.example.org"], ["https://a.example", "http://b.example:8080"]]
    return []


def _plan(tmp_path: Path, desktop: DesktopConfig, **extra: Any) -> DesktopPlan:
    req = DesktopRequest(session_id="s1", user="alice", cpus=4, gpus=0, start_timeout=60,
                         desktop=desktop, runtime=RuntimeConfig(kind="apptainer"),
                         network=NetworkConfig())
    base: dict[str, Any] = dict(
        request=req, session_dir=tmp_path / "s", workdir=tmp_path / "w", bind_addr="10.1.2.3",
        web_port=40100, user="alice", password="pw-Secret", encoder="x264enc",
        encoder_threads=2, xorg_driver="dummy", bus_id=None, tls_cert=tmp_path / "w/c.pem",
        tls_key=tmp_path / "w/k.pem", rtc_config=tmp_path / "w/rtc.json")
    base.update(extra)
    return DesktopPlan(**base)


def _image_selkies(plan: DesktopPlan, image: str) -> dict[str, str]:
    inv = build_invocation(plan, image, ":7", XFiles(plan.workdir / "Xauthority",
                                                     plan.workdir / "xorg.conf"), {}, None)
    pre = "APPTAINERENV_"
    return {k[len(pre):]: v for k, v in inv.env.items() if k.startswith(pre + "SELKIES_")}


def _assert_same(plan: DesktopPlan) -> None:
    host = {k: v for k, v in selkies_env(plan, ":7").items()
            if k.startswith("SELKIES_") and k not in SECRETS}
    for image in IMAGES:
        assert _image_selkies(plan, image) == host, image


CASES = [(f.name, v) for f in dataclasses.fields(DesktopConfig) for v in _values(f)]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_every_desktop_setting_reaches_the_images_selkies_unchanged(
        tmp_path: Path, name: str, value: Any) -> None:
    desktop = dataclasses.replace(DesktopConfig(), **{name: value})
    _assert_same(_plan(tmp_path, desktop))


def test_every_desktop_setting_is_covered_and_seen_by_selkies(tmp_path: Path) -> None:
    """Each setting that is Selkies' changes what Selkies gets (so the parity above is not
    vacuous), and no setting is left out of the parity cases."""
    default = selkies_env(_plan(tmp_path, DesktopConfig()), ":7")
    seen = {n for n, v in CASES
            if selkies_env(_plan(tmp_path, dataclasses.replace(DesktopConfig(), **{n: v})),
                           ":7") != default}
    fields = {f.name for f in dataclasses.fields(DesktopConfig)}
    assert fields - NOT_SELKIES - VIA_PLAN <= seen
    assert {n for n, _ in CASES} | NOT_SELKIES >= fields


@pytest.mark.parametrize("encoder", ["nvh264enc", "x264enc", "x264enc-striped", "jpeg",
                                     "vp8enc", "vp9enc"])
@pytest.mark.parametrize("threads", [1, 2, 8])
def test_plan_settings_reach_the_image_too(tmp_path: Path, encoder: str, threads: int) -> None:
    """What the agent decides (encoder, threads, TLS, ICE file, url path) as well."""
    _assert_same(_plan(tmp_path, DesktopConfig(), encoder=encoder, encoder_threads=threads))
    _assert_same(_plan(tmp_path, DesktopConfig(), tls_cert=None, tls_key=None, rtc_config=None,
                       url_path="/node/n/1/"))


@pytest.mark.parametrize(("audio", "microphone"), [(True, True), (True, False), (False, False)])
def test_sound_settings_reach_the_image_too(tmp_path: Path, audio: bool,
                                            microphone: bool) -> None:
    sound = {"PULSE_SERVER": f"unix:{tmp_path}/w/pulse/native",
             "PULSE_COOKIE": f"{tmp_path}/w/pulse/cookie"} if audio else {}
    plan = _plan(tmp_path, DesktopConfig(), audio=audio,
                 microphone=microphone, sound_env=sound)
    _assert_same(plan)
    inv = build_invocation(plan, IMAGES[0], ":7", XFiles(plan.workdir / "Xauthority", None),
                           {}, None)
    assert {k: inv.env[f"APPTAINERENV_{k}"] for k in sound} == sound


def test_token_mode_reaches_the_image_without_the_token(tmp_path: Path) -> None:
    plan = _plan(tmp_path, DesktopConfig(auth="token"), master_token="mt-Secret")
    _assert_same(plan)
    env = _image_selkies(plan, IMAGES[1])
    assert env["SELKIES_ENABLE_BASIC_AUTH"] == "false"
    assert not any("mt-Secret" in v or "pw-Secret" in v for v in env.values())
    assert set(SECRETS).isdisjoint(image_env(plan, ":7"))
