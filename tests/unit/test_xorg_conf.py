"""xorg.conf generation: BusID conversion, dummy and NVIDIA variants, resolution limits."""

from __future__ import annotations

import re

import pytest

from hpcdesk.node.gpu import bus_id_from_nvml
from hpcdesk.node.modeline import cvt_mode
from hpcdesk.node.xorg_conf import (
    MODE_VALIDATION,
    ResolutionError,
    XorgSpec,
    check_resolution,
    render_xorg_conf,
    xorg_mode,
)

BUS_IDS = [
    ("00000000:00:06.0", "PCI:0:6:0"),  # the H100 of FACTS.md
    ("00000000:3B:00.0", "PCI:59:0:0"),
    ("00000000:3b:00.0", "PCI:59:0:0"),
    ("00000000:AF:00.0", "PCI:175:0:0"),
    ("00000000:17:1f.7", "PCI:23:31:7"),
    ("0000:65:00.1", "PCI:101:0:1"),  # nvidia-smi / lspci 4-digit domain
    ("65:00.0", "PCI:101:0:0"),  # no domain at all
    ("00000001:8a:00.0", "PCI:138@1:0:0"),  # non-zero domain: bus@domain
    ("0000000a:00:00.0", "PCI:0@10:0:0"),
    ("00010000:C1:00.0", "PCI:193@65536:0:0"),
]


@pytest.mark.parametrize(("nvml", "xorg"), BUS_IDS)
def test_bus_id_from_nvml(nvml: str, xorg: str) -> None:
    assert bus_id_from_nvml(nvml) == xorg


@pytest.mark.parametrize("bad", ["", "PCI:0:6:0", "00000000:00:06", "zz:00.0", "00:40.0",
                                 "00000000:00:06.8"])
def test_bus_id_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="PCI"):
        bus_id_from_nvml(bad)


def sections(text: str) -> dict[str, str]:
    """Section name -> body (one of each kind in our files)."""
    found = re.findall(r'^Section "(\w+)"\n(.*?)^EndSection', text, flags=re.S | re.M)
    return dict(found)


def test_dummy_config_pins_the_size() -> None:
    text = render_xorg_conf(XorgSpec(1920, 1080))
    parts = sections(text)
    assert set(parts) == {"ServerFlags", "ServerLayout", "Device", "Monitor", "Screen"}
    assert '    Driver "dummy"' in parts["Device"]
    assert "BusID" not in text
    video_ram = int(re.search(r"VideoRam (\d+)", parts["Device"])[1])  # type: ignore[index]
    assert video_ram * 1024 >= 1920 * 1080 * 4
    assert int(re.search(r"DacSpeed (\d+)", parts["Device"])[1]) >= 139  # type: ignore[index]
    # the exact modeline of `cvt -r 1920 1080 60`, accepted by a monitor with wide ranges
    assert cvt_mode(1920, 1080, reduced=True).as_xorg() in parts["Monitor"]
    assert 'Option "ReducedBlanking" "true"' in parts["Monitor"]
    assert "HorizSync 1.0 - 2000.0" in parts["Monitor"]
    assert "VertRefresh 1.0 - 500.0" in parts["Monitor"]
    assert "DisplaySize 508 286" in parts["Monitor"]  # 96 dpi
    assert 'Modes "1920x1080R"' in parts["Screen"]
    assert "Virtual 1920 1080" in parts["Screen"]
    assert "DefaultDepth 24" in parts["Screen"]
    assert 'Option "AutoAddGPU" "false"' in parts["ServerFlags"]
    assert 'Option "AutoAddDevices" "false"' in parts["ServerFlags"]
    assert 'Option "BlankTime" "0"' in parts["ServerFlags"]
    assert 'Option "OffTime" "0"' in parts["ServerFlags"]


def test_dummy_big_screen_gets_memory_and_clock() -> None:
    text = render_xorg_conf(XorgSpec(7680, 4320, depth=30, refresh=60))
    ram = int(re.search(r"VideoRam (\d+)", text)[1])  # type: ignore[index]
    assert ram * 1024 >= 7680 * 4320 * 4
    dac = int(re.search(r"DacSpeed (\d+)", text)[1])  # type: ignore[index]
    assert dac > xorg_mode(XorgSpec(7680, 4320)).pixel_clock_mhz
    assert "DefaultDepth 30" in text and "Depth 30" in text


def test_depth_16_needs_less_memory() -> None:
    ram16 = int(re.search(r"VideoRam (\d+)", render_xorg_conf(  # type: ignore[index]
        XorgSpec(3840, 2160, depth=16)))[1])
    ram24 = int(re.search(r"VideoRam (\d+)", render_xorg_conf(  # type: ignore[index]
        XorgSpec(3840, 2160, depth=24)))[1])
    assert ram16 < ram24


def nvidia(**kw: object) -> XorgSpec:
    base: dict[str, object] = {"width": 1920, "height": 1080, "driver": "nvidia",
                               "bus_id": "PCI:0:6:0"}
    base.update(kw)
    return XorgSpec(**base)  # type: ignore[arg-type]


def test_nvidia_dfp_default() -> None:
    text = render_xorg_conf(nvidia())
    parts = sections(text)
    device = parts["Device"]
    assert '    Driver "nvidia"' in device
    assert '    BusID "PCI:0:6:0"' in device
    assert 'Option "ConnectedMonitor" "DFP"' in device
    assert "UseDisplayDevice" not in text
    assert f'Option "ModeValidation" "{MODE_VALIDATION}"' in device
    for relaxation in ("NoMaxPClkCheck", "NoEdidMaxPClkCheck", "NoMaxSizeCheck",
                       "NoHorizSyncCheck", "NoVertRefreshCheck", "NoVirtualSizeCheck",
                       "NoExtendedGpuCapabilitiesCheck", "NoTotalSizeCheck",
                       "NoDualLinkDVICheck", "NoDisplayPortBandwidthCheck",
                       "AllowNonEdidModes"):
        assert relaxation in MODE_VALIDATION
    assert 'Option "DPI" "96 x 96"' in device
    assert 'Option "AllowEmptyInitialConfiguration" "true"' in parts["Screen"]
    assert 'Option "AutoAddGPU" "false"' in parts["ServerFlags"]
    assert 'Modeline "1920x1080R"  138.50  1920 1968 2000 2080  1080 1083 1088 1111 +hsync ' \
           "-vsync" in parts["Monitor"]
    assert "Virtual 1920 1080" in parts["Screen"]
    assert "VideoRam" not in text


def test_nvidia_displayport_allows_4k() -> None:
    text = render_xorg_conf(nvidia(width=3840, height=2160, video_port="DP-0", depth=30,
                                   dpi=144, refresh=120))
    assert 'Option "ConnectedMonitor" "DP-0"' in text
    assert cvt_mode(3840, 2160, 120, reduced=True).as_xorg() in text
    assert "Virtual 3840 2160" in text
    assert "DefaultDepth 30" in text
    assert 'Option "DPI" "144 x 144"' in text


def test_nvidia_no_display_device() -> None:
    text = render_xorg_conf(nvidia(video_port="none", width=5120, height=2880))
    assert 'Option "UseDisplayDevice" "none"' in text
    assert "ConnectedMonitor" not in text


def test_nvidia_domain_bus_id() -> None:
    text = render_xorg_conf(nvidia(bus_id=bus_id_from_nvml("00000001:8a:00.0")))
    assert 'BusID "PCI:138@1:0:0"' in text


@pytest.mark.parametrize(("width", "height", "port"), [
    (2561, 1440, "DFP"), (2560, 1601, "DFP"), (3840, 2160, "DFP"),
    (7681, 4320, "DP-1"), (8192, 8192, "DP-0"), (20000, 1000, "none"),
])
def test_resolution_limits(width: int, height: int, port: str) -> None:
    spec = nvidia(width=width, height=height, video_port=port)
    with pytest.raises(ResolutionError, match=r"at most \d+x\d+") as info:
        render_xorg_conf(spec)
    assert isinstance(info.value, ValueError)
    if port == "DFP":
        assert "DP-0" in str(info.value)


@pytest.mark.parametrize(("width", "height", "port"), [
    (2560, 1600, "DFP"), (2560, 1440, "DFP"), (7680, 4320, "DP-3"), (16384, 8192, "none"),
])
def test_resolutions_within_limits(width: int, height: int, port: str) -> None:
    check_resolution(nvidia(width=width, height=height, video_port=port))


def test_dummy_limit() -> None:
    with pytest.raises(ResolutionError):
        render_xorg_conf(XorgSpec(16385, 1000))
    check_resolution(XorgSpec(7680, 4320))


def test_odd_width_keeps_the_exact_size() -> None:
    # cvt rounds 1366 up to 1368; the mode must still be exactly as wide as the screen.
    mode = xorg_mode(XorgSpec(1366, 768))
    assert mode.hdisplay == 1366
    assert mode.name == "1366x768R"
    assert mode.hsync_start > 1366
    text = render_xorg_conf(XorgSpec(1366, 768))
    assert 'Modeline "1366x768R"   72.25  1366 1416 1448 1528  768 771 781 790' in text
    assert "Virtual 1366 768" in text


def test_low_refresh_uses_reduced_blanking_anyway() -> None:
    mode = xorg_mode(XorgSpec(1920, 1080, refresh=30))
    assert mode.reduced
    assert mode.vrefresh_hz == pytest.approx(30, rel=0.01)


@pytest.mark.parametrize(("kw", "match"), [
    ({"depth": 8}, "depth"),
    ({"refresh": 0}, "refresh"),
    ({"dpi": 5}, "dpi"),
    ({"video_port": "HDMI-0"}, "video_port"),
    ({"driver": "nvidia"}, "BusID"),
    ({"driver": "nvidia", "bus_id": "00000000:00:06.0"}, "decimal"),
    ({"driver": "vesa"}, "driver"),
    ({"width": 0}, "positive"),
])
def test_spec_validation(kw: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"width": 1920, "height": 1080}
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        XorgSpec(**base)  # type: ignore[arg-type]


def test_video_port_case_and_dfp_numbered() -> None:
    assert 'ConnectedMonitor" "DP-2"' in render_xorg_conf(nvidia(video_port="dp-2"))
    assert 'ConnectedMonitor" "DFP-1"' in render_xorg_conf(nvidia(video_port="DFP-1"))
    assert '"UseDisplayDevice" "none"' in render_xorg_conf(nvidia(video_port="None"))
