"""The OOD app generator and its form check (no cluster): files, quoting, validation."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcdesk import cli, config
from hpcdesk.connection import Connection
from hpcdesk.errors import UsageError
from hpcdesk.ood import app, form, job

FORM = {"bc_queue": "gpu", "bc_account": "", "bc_num_hours": "2", "hpcdesk_cores": "4",
        "hpcdesk_memory": "16", "hpcdesk_gpus": "1", "hpcdesk_gpu_type": "",
        "hpcdesk_resolution": "1920x1080", "hpcdesk_encoder": "auto", "bc_email_on_started": "0"}
SITE = """
name: ood-test
scheduler: {partition: gpu, time: "4:00:00", gpus: 1}
ood:
  partitions: [gpu, debug]
  accounts: [proj1, proj2]
  gpu_types: [a100, l40s]
  max_gpus: 2
  max_hours: 12
  max_cores: 8
  max_memory_gb: 32
desktop:
  allowed_origins: ["https://ondemand.example.org"]
"""


# Configuration layers from tmp_path only (the one fixture, tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.fixture
def site(tmp_path: Path) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    return str(path)


def test_check_turns_the_form_into_sbatch_arguments(site: str) -> None:
    values = {**FORM, "bc_queue": "debug", "bc_account": "proj2", "hpcdesk_cores": "8",
              "hpcdesk_memory": "32", "hpcdesk_gpus": "2", "hpcdesk_gpu_type": "l40s"}
    checked = form.check(site, values)
    cfg = checked.loaded.config
    # The default route is OOD's secure one: the node speaks HTTPS to the portal.
    assert (cfg.desktop.auth, cfg.desktop.https, cfg.network.push) == ("token", True, False)
    assert (cfg.desktop.width, cfg.desktop.height) == (1920, 1080)
    assert (cfg.scheduler.partition, cfg.scheduler.account, cfg.scheduler.time) == (
        "debug", "proj2", "2:00:00")
    # Partition, account and time limit reach sbatch through OOD's smart attributes
    # (-p, -A, -t); submit.yml's native list does not repeat them.
    assert checked.native == ["--job-name=hpcdesk", "--nodes=1", "--ntasks=1",
                              "--cpus-per-task=8", "--mem=32G", "--gres=gpu:l40s:2"]
    assert checked.loaded.sources["scheduler.time"] == "form"
    # A blank account or queue: the site's defaults go in native.
    blank = form.check(site, {**FORM, "bc_queue": ""}).native
    assert "--partition=gpu" in blank and not [a for a in blank if a.startswith("--time")]


def test_user_config_does_not_widen_the_form(site: str, tmp_path: Path) -> None:
    """~/.config/hpcdesk/config.yaml asking for 8 GPUs, 7 days and another partition changes
    nothing in what the form submits (ood check and ood start read the site file only)."""
    before = form.check(site, FORM)
    user = tmp_path / "xdg" / "hpcdesk" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("scheduler: {gpus: 8, time: 7-00:00:00, partition: bigmem, cpus: 64, "
                    "memory: 512G, extra_args: [--exclusive]}\ndesktop: {width: 3840}\n")
    assert config.load(site).config.scheduler.gpus == 8  # the user's file is read elsewhere
    after = form.check(site, FORM)
    assert after.native == before.native
    assert not [a for a in after.native if "gpu:8" in a or "7-00" in a or "bigmem" in a]
    assert dataclasses.asdict(after.loaded.config) == dataclasses.asdict(before.loaded.config)
    assert not [s for s in after.loaded.sources.values() if s.startswith("user file")]


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("desktop.nope", "1", "form: desktop.nope: not a field of this form"),
    ("hpcdesk_resolution", "wide", "is not WIDTHxHEIGHT"),
    ("hpcdesk_resolution", "0x0", "form: desktop.width: 0 is out of range"),
    ("hpcdesk_resolution", "100000x1", "desktop.width: 100000 is out of range"),
    ("hpcdesk_resolution", "1024x768", "1024x768 is not offered"),
    ("bc_num_hours", "-5", "is not a whole number of hours"),
    ("bc_num_hours", "1:xx", "is not a whole number of hours"),
    ("bc_num_hours", "13", "what this site offers (12 hours)"),
    ("bc_num_hours", "0", "not between 1 and"),
    ("bc_queue", "nosuchpartition", "invalid partition"),
    ("bc_account", "other", "invalid account"),
    ("hpcdesk_cores", "9", "more than this site offers (8 cores)"),
    ("hpcdesk_memory", "33", "more than this site offers (32 GB)"),
    ("hpcdesk_memory", "0", "is less than 1"),
    ("bc_email_on_started", "yes", "is not 0 or 1"),
    ("hpcdesk_gpus", "3", "more than this site offers"),
    ("hpcdesk_gpus", "1;id", "is not a whole number"),
    ("hpcdesk_gpu_type", "h100", "invalid GPU type"),
    ("hpcdesk_interface", "vnc", "not a field of this form"),
    ("hpcdesk_encoder", "$(id)", "is not offered"),
])
def test_bad_form_values_are_one_clear_error(site: str, field: str, value: str,
                                             needle: str) -> None:
    with pytest.raises(UsageError) as err:
        form.check(site, {**FORM, field: value})
    assert needle in str(err.value)


def test_free_account_field_is_checked_like_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("scheduler: {partition: gpu}\n")
    for bad in ("a'b", "UTC\n;id"):
        with pytest.raises(UsageError, match="form: scheduler.account"):
            form.check(str(path), {**FORM, "bc_account": bad})
    checked = form.check(str(path), {**FORM, "bc_account": " proj "})  # stripped, as OOD does
    assert checked.loaded.config.scheduler.account == "proj"


def test_the_app_is_complete_and_every_yaml_parses(site: str, tmp_path: Path) -> None:
    out = tmp_path / "app"
    loaded = config.load(site)
    done = app.generate(loaded, site, out, hpcdesk_command='"/opt/it\'s here/hpcdesk"')
    assert sorted(done.files) == sorted([*app.FILES.values(), "icon.png"])
    manifest = yaml.safe_load((out / "manifest.yml").read_text())
    assert manifest["role"] == "batch_connect"
    spec = yaml.safe_load((out / "form.yml").read_text())
    assert spec["cluster"] == "ood-test" and spec["form"] == list(form.FIELDS)
    attrs = spec["attributes"]
    assert [o[1] for o in attrs["bc_queue"]["options"]] == ["gpu", "debug"]
    assert [o[1] for o in attrs["bc_account"]["options"]] == ["proj1", "proj2"]
    assert [o[1] for o in attrs["hpcdesk_gpu_type"]["options"]] == ["", "a100", "l40s"]
    assert (attrs["hpcdesk_gpus"]["max"], attrs["bc_num_hours"]["max"]) == (2, 12)
    assert (attrs["hpcdesk_cores"]["max"], attrs["hpcdesk_memory"]["max"]) == (8, 32)
    assert attrs["bc_num_hours"]["value"] == 4
    assert done.warnings == []
    assert (out / "icon.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "template/script.sh.erb").stat().st_mode & 0o111
    # The hpcdesk command is quoted for the shell and for Ruby.
    assert "'/opt/it'\"'\"'s here/hpcdesk' node run" in (out / "template/script.sh.erb").read_text()
    assert '"/opt/it\'s here/hpcdesk", "ood", "check"' in (out / "submit.yml.erb").read_text()
    with pytest.raises(UsageError, match="not empty"):
        app.generate(loaded, site, out)
    with pytest.raises(UsageError, match="--hpcdesk"):
        app.generate(loaded, site, out, hpcdesk_command="'unbalanced", force=True)


def test_shell_scripts_are_valid_bash(site: str, tmp_path: Path) -> None:
    out = tmp_path / "app"
    app.generate(config.load(site), site, out)
    for name in ("script.sh.erb", "after.sh.erb"):  # no ERB tags in these two
        text = (out / "template" / name).read_text()
        assert "<%" not in text
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_the_app_needs_selkies_token_mode(tmp_path: Path) -> None:
    """The host runtime or hpcdesk's images (token mode); the upstream images have none."""
    path = tmp_path / "app.yaml"
    path.write_text("scheduler: {partition: gpu}\nruntime: {kind: apptainer, image: glx}\n")
    with pytest.raises(UsageError, match="token mode needs Selkies 2.x"):
        app.generate(config.load(str(path)), str(path), tmp_path / "out")
    with pytest.raises(UsageError, match="token mode needs Selkies 2.x"):
        form.check(str(path), FORM)
    path.write_text("scheduler: {partition: gpu}\nruntime: {kind: apptainer, image: debian}\n")
    assert form.check(str(path), FORM).loaded.config.desktop.auth == "token"
    app.generate(config.load(str(path)), str(path), tmp_path / "out")


def test_ruby_strings_do_not_interpolate() -> None:
    assert app.ruby_string('a"#{x}\\') == '"a\\"\\#{x}\\\\"'


def test_after_sh_gets_shell_quoted_assignments() -> None:
    text = job.shell_assignments({"host": "n1", "port": 4000, "token": "a'b$(id)",
                                  "session": "abc123"})
    assert text == "host=n1\nport=4000\ntoken='a'\"'\"'b$(id)'\nhpcdesk_session=abc123\n"
    out = subprocess.run(["bash", "-c", text + 'printf %s "$token"'], capture_output=True,
                         text=True, check=True).stdout
    assert out == "a'b$(id)"


def test_wait_reports_the_agents_reason(tmp_path: Path) -> None:
    (tmp_path / "request.json").write_text(json.dumps({"start_timeout": 5}))
    (tmp_path / "node.json").write_text(json.dumps({"phase": "failed",
                                                    "reason": "X server failed to start"}))
    with pytest.raises(job.NotReady, match="X server failed to start"):
        job.wait(tmp_path, None)
    (tmp_path / "node.json").write_text(json.dumps({"phase": "ready"}))
    (tmp_path / "connection.json").write_text(json.dumps({"host": "n", "port": 1}))
    assert job.wait(tmp_path, None).port == 1


def test_token_auth_is_refused_for_apptainer(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("runtime: {kind: apptainer, image: glx}\n")
    with pytest.raises(UsageError, match="desktop.auth: token mode needs Selkies 2.x"):
        config.load(str(path), {"desktop.auth": "token"})


def test_browser_link_carries_the_token_in_the_fragment_only() -> None:
    assert Connection(url="http://n:1/", token="t0k").browser_link() == "http://n:1/#token=t0k"
    assert Connection(url="http://n:1/", token=None).browser_link() == "http://n:1/"
    assert "t0k" not in repr(Connection(url="http://n:1/", token="t0k"))


def test_check_command_reads_stdin_and_exits_2(site: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(FORM)))
    assert cli.main(["ood", "check", "--site", site]) == 0
    assert "--mem=16G" in json.loads(capsys.readouterr().out)["native"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({**FORM, "bc_num_hours": "x"})))
    assert cli.main(["ood", "check", "--site", site]) == 2
    assert "is not a whole number of hours" in capsys.readouterr().err


def test_token_auth_serves_webrtc_too(tmp_path: Path) -> None:
    """The agent proves for webrtc too that a token-less client gets nothing (token_gate)."""
    loaded = config.load(None, {"desktop.auth": "token", "desktop.transport": "webrtc"})
    assert loaded.config.desktop.auth == "token"


def test_ood_sessions_use_websockets_whatever_the_site_default(tmp_path: Path) -> None:
    path = tmp_path / "rtc.yaml"
    path.write_text("scheduler: {partition: gpu}\ndesktop: {transport: webrtc}\n")
    assert form.check(str(path), FORM).loaded.config.desktop.transport == "websockets"


def test_generate_says_when_the_portal_origin_is_missing(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    path = tmp_path / "noorigin.yaml"
    path.write_text("scheduler: {partition: gpu}\nood: {proxy: rnode}\n")
    assert cli.main(["ood", "generate", "--site", str(path), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "desktop.allowed_origins is not set" in err and "403" in err
    assert "in clear" in err  # a plain-HTTP route is named for what it is
    for bad in ("*", "https://*.example.org", "portal.example.org"):
        path.write_text(f"desktop: {{allowed_origins: [{json.dumps(bad)}]}}\n")
        with pytest.raises(UsageError, match="desktop.allowed_origins"):
            config.load(str(path))
    user = tmp_path / "xdg" / "hpcdesk" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text('desktop: {allowed_origins: ["https://evil.example.org"]}\n')
    with pytest.raises(UsageError, match="only the site file"):
        config.load(None)


def test_allowed_origins_reach_selkies_through_the_one_mapping(tmp_path: Path) -> None:
    from hpcdesk.node import selkies_settings as host
    from hpcdesk.request import DesktopRequest
    from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig

    req = DesktopRequest(session_id="s", user="u", cpus=2, gpus=0, start_timeout=60,
                         desktop=DesktopConfig(allowed_origins=["https://a.example:8443",
                                                                "https://b.example"]),
                         runtime=RuntimeConfig(), network=NetworkConfig())
    plan = type("Plan", (), {"request": req})()
    assert host.origin_env(plan) == {  # type: ignore[arg-type]
        "SELKIES_ALLOWED_ORIGINS": "https://a.example:8443,https://b.example"}
    req.desktop.allowed_origins = []
    assert host.origin_env(plan) == {}  # type: ignore[arg-type]


def test_card_values_survive_oods_echo_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "request.json").write_text(json.dumps({"time_limit": 3600}))
    conn = {"host": "n1", "port": 4000, "token": "t", "session": "s1", "node": "gpu01",
            "encoder": "x264enc", "started_at": 1000.5,
            "encoder_reason": "nvh264enc: no encode session opened (NV_ENC_ERR_2) \\c 'x' #y"}
    text = job.shell_assignments(conn, job.card(tmp_path, conn))
    # What OOD's create_yml does with these variables: echo -e "name: $name" lines.
    names = ["host", "port", "token", "hpcdesk_session", "hpcdesk_node", "hpcdesk_encoder",
             "hpcdesk_encoder_note", "hpcdesk_ends"]
    script = text + 'echo -e "' + "\\n".join(f"{n}: ${n}" for n in names) + '"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         check=True).stdout
    got = yaml.safe_load(out)
    assert got["hpcdesk_node"] == "gpu01" and got["hpcdesk_ends"] == 4600
    assert got["hpcdesk_encoder_note"].startswith("nvh264enc: no encode session opened")


def test_doctor_names_what_the_portal_needs(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("scheduler: {partition: gpu}\n")
    assert [c.status for c in form.portal_checks(config.load(str(path)))] == ["skip"]
    path.write_text("scheduler: {partition: gpu}\nood: {proxy: rnode}\n")
    found = form.portal_checks(config.load(str(path)))
    assert [c.status for c in found] == ["warn", "warn"]
    assert "desktop.allowed_origins is not set" in found[0].detail
    assert "ondemand.example.org" in found[0].fix and "secure-rnode" in found[1].fix
    path.write_text('desktop: {allowed_origins: ["https://ood.example.org"]}\n')
    (ok,) = form.portal_checks(config.load(str(path)))
    assert ok.status == "ok" and "https://ood.example.org" in ok.detail
