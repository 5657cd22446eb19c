"""The stream knobs (desktop.*) reach Selkies' environment in the host runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.selkies_settings import selkies_env, threaded
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig


def plan(tmp_path: Path, encoder: str, threads: int, **desktop: object) -> DesktopPlan:
    req = DesktopRequest(session_id="abc123", user="alice", cpus=2 * threads, gpus=0,
                         start_timeout=300, desktop=DesktopConfig(**desktop),  # type: ignore[arg-type]
                         runtime=RuntimeConfig(), network=NetworkConfig())
    return DesktopPlan(request=req, session_dir=tmp_path / "s", workdir=tmp_path / "w",
                       bind_addr="10.0.0.5", web_port=40001, user="alice", password="pw",
                       encoder=encoder, encoder_threads=threads, xorg_driver="dummy",
                       bus_id=None, tls_cert=None, tls_key=None, gpu_uuid=None)


@pytest.mark.parametrize(("setting", "threads", "want"), [
    ("auto", 1, False), ("auto", 2, True), ("auto", 8, True),
    ("always", 1, True), ("never", 4, False),
])
def test_threading_follows_the_allocation(setting: str, threads: int, want: bool) -> None:
    assert threaded(setting, threads) is want


def test_defaults_reach_selkies(tmp_path: Path) -> None:
    env = selkies_env(plan(tmp_path, "x264enc", 1), ":5")
    assert env["SELKIES_ENCODER"] == "h264enc" and env["SELKIES_USE_CPU"] == "true"
    assert env["SELKIES_CPU_ENCODE_THREADING"] == "false"  # 2 CPUs: one encoder thread
    assert env["SELKIES_RATE_CONTROL_MODE"] == "cbr"
    assert env["SELKIES_JPEG_QUALITY"] == "40"


@pytest.mark.parametrize(("encoder", "selkies"), [("jpeg", "jpeg"),
                                                  ("x264enc-striped", "h264enc-striped")])
def test_websocket_only_encoders(tmp_path: Path, encoder: str, selkies: str) -> None:
    env = selkies_env(plan(tmp_path, encoder, 4, rate_control="crf", video_crf=30,
                           jpeg_quality=70), ":5")
    assert env["SELKIES_ENCODER"] == selkies and env["SELKIES_USE_CPU"] == "true"
    assert env["SELKIES_CPU_ENCODE_THREADING"] == "true"
    assert (env["SELKIES_RATE_CONTROL_MODE"], env["SELKIES_VIDEO_CRF"],
            env["SELKIES_JPEG_QUALITY"]) == ("crf", "30", "70")
