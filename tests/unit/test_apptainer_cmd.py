"""The apptainer invocation, pinned for each kind of image (glx, egl, kasmvnc, no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.runtime.apptainer import ImageKind, build_invocation
from hpcdesk.node.xserver import XFiles
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig

DRIVER_FILES: dict[str, Path | None] = {
    "nvidia_drv.so": Path("/usr/lib/x86_64-linux-gnu/nvidia/xorg/nvidia_drv.so"),
    "libglxserver_nvidia.so": Path("/usr/lib/x86_64-linux-gnu/nvidia/xorg/libglxserver_nvidia.so"),
    "nvidia_icd.json": Path("/usr/share/vulkan/icd.d/nvidia_icd.json"),
    "10_nvidia.json": Path("/usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
}


def plan(tmp_path: Path, gpu: bool, interface: str = "selkies") -> DesktopPlan:
    req = DesktopRequest(
        session_id="abc123", user="alice", cpus=8, gpus=1 if gpu else 0, start_timeout=300,
        desktop=DesktopConfig(interface=interface, width=2560, height=1440),  # type: ignore[arg-type]
        runtime=RuntimeConfig(kind="apptainer", binds=["/scratch:/scratch"]),
        network=NetworkConfig())
    return DesktopPlan(request=req, session_dir=tmp_path / "s", workdir=tmp_path / "w",
                       bind_addr="10.0.0.5", web_port=40001, user="alice", password="s3cret!",
                       encoder="nvh264enc" if gpu else "x264enc", encoder_threads=4,
                       xorg_driver="nvidia" if gpu else "dummy",
                       bus_id="PCI:0:6:0" if gpu else None,
                       tls_cert=tmp_path / "w/tls-cert.pem", tls_key=tmp_path / "w/tls-key.pem",
                       gpu_uuid="GPU-1234" if gpu else None)


def xfiles(tmp_path: Path, conf: bool = True) -> XFiles:
    return XFiles(tmp_path / "w/Xauthority", tmp_path / "w/xorg.conf" if conf else None)


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")


def test_glx_with_gpu(tmp_path: Path) -> None:
    inv = build_invocation(plan(tmp_path, gpu=True), "/img/glx-24.04-0123.sif", ":21",
                           xfiles(tmp_path), DRIVER_FILES, "580.159.04")
    w = tmp_path / "w"
    assert inv.argv == [
        "apptainer", "run", "--cleanenv", "--contain", "--ipc", "--writable-tmpfs",
        "--workdir", f"{w}/apptainer", "--home", "/home/alice",
        "--bind", f"{w}:{w}:ro", "--nv",
        "--bind", "/usr/share/vulkan/icd.d/nvidia_icd.json:/usr/share/vulkan/icd.d/nvidia_icd.json:ro",
        "--bind", "/usr/share/glvnd/egl_vendor.d/10_nvidia.json:/usr/share/glvnd/egl_vendor.d/10_nvidia.json:ro",
        "--bind", "/usr/lib/x86_64-linux-gnu/nvidia/xorg/nvidia_drv.so:/usr/lib/xorg/modules/drivers/nvidia_drv.so:ro",
        "--bind", "/usr/lib/x86_64-linux-gnu/nvidia/xorg/libglxserver_nvidia.so:/usr/lib/xorg/modules/extensions/libglxserver_nvidia.so:ro",
        "--bind", "/scratch:/scratch", "/img/glx-24.04-0123.sif"]
    e = inv.env
    assert e["APPTAINERENV_DISPLAY"] == ":21"
    assert e["APPTAINERENV_DISPLAY_SIZEW"] == "2560" and e["APPTAINERENV_DISPLAY_SIZEH"] == "1440"
    assert e["APPTAINERENV_NGINX_PORT"] == "40001" and "APPTAINERENV_SELKIES_PORT" not in e
    assert e["APPTAINERENV_HPCDESK_GPU_UUID"] == "GPU-1234"
    # The X files hpcdesk wrote, in the work directory bound read-only at its own path.
    assert e["APPTAINERENV_XAUTHORITY"] == f"{w}/Xauthority"
    assert e["APPTAINERENV_HPCDESK_XORG_CONF"] == f"{w}/xorg.conf"
    assert e["APPTAINERENV_SELKIES_ENCODER"] == "nvh264enc"
    assert e["APPTAINERENV_KASMVNC_ENABLE"] == "false"
    assert e["APPTAINERENV_NVIDIA_DRIVER_VERSION"] == "580.159.04"
    assert e["APPTAINERENV_NVIDIA_DRIVER_CAPABILITIES"] == "all"
    assert e["APPTAINERENV_HPCDESK_PASSWORD_FILE"] == "/tmp/.hpcdesk-password"
    assert e["APPTAINERENV_SELKIES_ENABLE_HTTPS"] == "true"
    assert all("s3cret" not in a for a in inv.argv)
    assert not any("s3cret" in v for v in e.values())  # the password travels by file only
    assert inv.password_file == tmp_path / "w/apptainer/tmp/.hpcdesk-password"


def test_egl_with_gpu_binds_no_xorg_modules(tmp_path: Path) -> None:
    inv = build_invocation(plan(tmp_path, gpu=True), "/img/egl-22.04-aa.sif", ":22",
                           xfiles(tmp_path, conf=False), DRIVER_FILES, "580.159.04")
    assert "--nv" in inv.argv
    joined = " ".join(inv.argv)
    assert "nvidia_drv.so" not in joined and "10_nvidia.json" in joined
    assert ImageKind.detect("/img/egl-22.04-aa.sif") == ImageKind("egl", True)
    assert "APPTAINERENV_HPCDESK_XORG_CONF" not in inv.env  # Xvfb: no xorg.conf
    assert inv.env["APPTAINERENV_XAUTHORITY"] == str(tmp_path / "w/Xauthority")


@pytest.mark.parametrize(("image", "planned", "driver"), [
    ("/img/debian-bookworm-c.sif", "dummy", "dummy"),
    ("/img/debian-bookworm-c.sif", "nvidia", "nvidia"),
    ("/img/kde-bookworm-c.sif", "dummy", "dummy"), ("/img/kde-bookworm-c.sif", "nvidia", "nvidia"),
    ("/img/glx-24.04-0123.sif", "dummy", "nvidia"), ("/img/egl-22.04-aa.sif", "nvidia", None),
])
def test_which_x_server_each_image_runs(image: str, planned: str, driver: str | None) -> None:
    """hpcdesk's images are GPU-ready like the GLX image: their Xorg takes the driver that the
    GPU binding chose (nvidia where the host's X driver exists, bound in)."""
    assert ImageKind.detect(image).xorg_driver(planned) == driver  # type: ignore[arg-type]


def test_kde_on_a_gpu_node_binds_the_hosts_x_driver(tmp_path: Path) -> None:
    inv = build_invocation(plan(tmp_path, gpu=True), "/img/kde-bookworm-c.sif", ":25",
                           xfiles(tmp_path), DRIVER_FILES, "580.159.04")
    assert inv.argv[:2] == ["apptainer", "exec"] and inv.argv[-1] == "/opt/hpcdesk/entrypoint.sh"
    assert "--nv" in inv.argv and "--writable-tmpfs" not in inv.argv
    binds = [inv.argv[i + 1] for i, a in enumerate(inv.argv) if a == "--bind"]
    assert ("/usr/lib/x86_64-linux-gnu/nvidia/xorg/nvidia_drv.so:"
            "/usr/lib/xorg/modules/drivers/nvidia_drv.so:ro") in binds
    assert ("/usr/lib/x86_64-linux-gnu/nvidia/xorg/libglxserver_nvidia.so:"
            "/usr/lib/xorg/modules/extensions/libglxserver_nvidia.so:ro") in binds
    assert inv.env["APPTAINERENV_SELKIES_ENCODER"] == "h264enc"
    assert inv.env["APPTAINERENV_SELKIES_USE_CPU"] == "false"  # NVENC
    assert inv.env["APPTAINERENV_HPCDESK_GPU_UUID"] == "GPU-1234"


def test_token_mode_in_hpcdesk_images_goes_by_file(tmp_path: Path) -> None:
    p = plan(tmp_path, gpu=False)
    p.master_token = "m4ster-T0ken"
    p.url_path = "/node/n1/40001/"
    inv = build_invocation(p, "/img/kde-bookworm-c.sif", ":26", xfiles(tmp_path), {}, None)
    e = inv.env
    assert e["APPTAINERENV_HPCDESK_MASTER_TOKEN_FILE"] == "/tmp/.hpcdesk-master-token"
    assert inv.token_file == tmp_path / "w/apptainer/tmp/.hpcdesk-master-token"
    assert e["APPTAINERENV_SELKIES_ENABLE_BASIC_AUTH"] == "false"
    assert e["APPTAINERENV_SELKIES_SUBFOLDER"] == "/node/n1/40001/"
    assert not any("m4ster" in v or "s3cret" in v for v in [*e.values(), *inv.argv])


def test_kasmvnc_interface(tmp_path: Path) -> None:
    inv = build_invocation(plan(tmp_path, gpu=True, interface="vnc"), "/img/glx-24.04-b.sif",
                           ":23", xfiles(tmp_path), DRIVER_FILES, None)
    assert inv.env["APPTAINERENV_KASMVNC_ENABLE"] == "true"
    assert inv.env["APPTAINERENV_KASMVNC_THREADS"] == "4"
    assert "APPTAINERENV_NVIDIA_DRIVER_VERSION" not in inv.env


def test_debian_without_gpu(tmp_path: Path) -> None:
    inv = build_invocation(plan(tmp_path, gpu=False), "/img/debian-bookworm-c.sif", ":24",
                           xfiles(tmp_path), DRIVER_FILES, None)
    w = tmp_path / "w"
    assert inv.argv == [
        "apptainer", "exec", "--cleanenv", "--contain", "--ipc",
        "--workdir", f"{w}/apptainer", "--home", "/home/alice", "--bind", f"{w}:{w}:ro",
        "--bind", "/scratch:/scratch", "/img/debian-bookworm-c.sif",
        "/opt/hpcdesk/entrypoint.sh"]
    e = inv.env
    assert e["APPTAINERENV_HPCDESK_PASSWORD_FILE"] == "/tmp/.hpcdesk-password"
    assert inv.password_file == w / "apptainer/tmp/.hpcdesk-password"
    assert not any("s3cret" in v for v in e.values())
    assert e["APPTAINERENV_HPCDESK_WEB_PORT"] == "40001"
    assert e["APPTAINERENV_HPCDESK_BIND_ADDR"] == "10.0.0.5"
    assert e["APPTAINERENV_HPCDESK_TLS_CERT"] == f"{w}/tls-cert.pem"
    assert e["APPTAINERENV_SELKIES_ENCODER"] == "h264enc"   # PyPI selkies' name for x264
    assert e["APPTAINERENV_SELKIES_USE_CPU"] == "true"
    assert "--nv" not in inv.argv and "APPTAINERENV_PASSWD" not in e
    assert "APPTAINERENV_HPCDESK_GPU_UUID" not in e
    assert e["APPTAINERENV_HPCDESK_XORG_CONF"] == f"{w}/xorg.conf"


@pytest.mark.parametrize(("output", "expect"), [
    ("apptainer version 1.4.5-2", ("apptainer", "1.4.5-2")),
    ("singularity-ce version 4.1.0", ("singularity-ce", "4.1.0")),
    ("singularity version 3.8.7", ("singularity", "3.8.7")),
])
def test_runtime_version_detection(tmp_path: Path, output: str,
                                   expect: tuple[str, str]) -> None:
    """A FAKE apptainer that only prints a version line (the real one runs in tests/cluster)."""
    from hpcdesk.node.runtime.apptainer import detect_version

    fake = tmp_path / "fake-apptainer"
    fake.write_text(f"#!/bin/sh\necho '{output}'\n")
    fake.chmod(0o755)
    assert detect_version(str(fake)) == expect


def test_too_old_singularity_is_refused(tmp_path: Path) -> None:
    from hpcdesk.node.errors import StartError
    from hpcdesk.node.runtime.apptainer import detect_version

    fake = tmp_path / "fake-singularity"
    fake.write_text("#!/bin/sh\necho 'singularity version 2.6.1'\n")
    fake.chmod(0o755)
    with pytest.raises(StartError, match="too old"):
        detect_version(str(fake))


def test_the_audit_token_reaches_the_images_selkies_by_env_file(tmp_path: Path) -> None:
    """Selkies reads its audit bearer secret from its environment only: hpcdesk's images get
    it through an --env-file (0600, in the work directory), never in apptainer's argv or
    environment; the upstream images (no audit) get none."""
    from hpcdesk.node.selkies_policy import AuditSink

    p = plan(tmp_path, gpu=False)
    p.audit = AuditSink("http://127.0.0.1:45678/audit", "aud1t-T0ken")
    inv = build_invocation(p, "/img/debian-bookworm-c.sif", ":24", xfiles(tmp_path), {}, None)
    assert inv.env_file == tmp_path / "w/apptainer/selkies-secrets.env"
    assert inv.argv[inv.argv.index("--env-file") + 1] == str(inv.env_file)
    assert inv.argv.index("--env-file") < inv.argv.index("/img/debian-bookworm-c.sif")
    assert inv.env["APPTAINERENV_SELKIES_AUDIT_WEBHOOK_URL"] == "http://127.0.0.1:45678/audit"
    assert not any("aud1t" in v for v in [*inv.env.values(), *inv.argv])
    inv.password_file.parent.mkdir(parents=True)
    inv.write_secrets("s3cret!", "m4ster")
    assert inv.env_file.read_text() == "SELKIES_AUDIT_WEBHOOK_TOKEN=aud1t-T0ken\n"
    assert inv.env_file.stat().st_mode & 0o777 == 0o600
    assert inv.password_file.read_text() == "s3cret!\n"
    assert inv.token_file.read_text() == "m4ster\n"
    upstream = build_invocation(p, "/img/glx-24.04-b.sif", ":24", xfiles(tmp_path), {}, None)
    assert upstream.env_file is None and "--env-file" not in upstream.argv


def test_own_images_serve_their_web_client_in_place(tmp_path: Path) -> None:
    """hpcdesk's images: Selkies serves the image's own client (no 11 MB copy out of the
    squashfuse mount per start); an upstream image's nginx serves its own, so none there."""
    own = build_invocation(plan(tmp_path, gpu=False), "/img/kde-bookworm-0123456789abcdef.sif",
                           ":24", xfiles(tmp_path), DRIVER_FILES, None)
    assert own.env["APPTAINERENV_SELKIES_WEB_ROOT"] == (
        "/opt/hpcdesk/venv/lib/python3.11/site-packages/selkies/selkies_web")
    upstream = build_invocation(plan(tmp_path, gpu=True), "/img/glx-24.04-b.sif", ":24",
                                xfiles(tmp_path), DRIVER_FILES, None)
    assert "APPTAINERENV_SELKIES_WEB_ROOT" not in upstream.env
