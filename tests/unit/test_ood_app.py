"""The OOD app generator and its form check (no cluster): files, quoting, validation."""

from __future__ import annotations

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

FORM = {"hpcdesk_partition": "gpu", "hpcdesk_account": "", "hpcdesk_hours": "2",
        "hpcdesk_gpus": "1", "hpcdesk_gpu_type": "", "hpcdesk_resolution": "1920x1080",
        "hpcdesk_interface": "selkies", "hpcdesk_encoder": "auto"}
SITE = """
name: ood-test
scheduler: {partition: gpu, time: "4:00:00", gpus: 1}
ood:
  partitions: [gpu, debug]
  accounts: [proj1, proj2]
  gpu_types: [a100, l40s]
  max_gpus: 2
  max_hours: 12
"""


# Configuration layers from tmp_path only (the one fixture, tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_config")


@pytest.fixture
def site(tmp_path: Path) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    return str(path)


def test_check_turns_the_form_into_sbatch_arguments(site: str) -> None:
    values = {**FORM, "hpcdesk_partition": "debug", "hpcdesk_account": "proj2",
              "hpcdesk_gpus": "2", "hpcdesk_gpu_type": "l40s"}
    checked = form.check(site, values)
    cfg = checked.loaded.config
    assert (cfg.desktop.auth, cfg.desktop.https, cfg.network.push) == ("token", False, False)
    assert (cfg.desktop.width, cfg.desktop.height) == (1920, 1080)
    assert checked.native == ["--job-name=hpcdesk", "--nodes=1", "--ntasks=1",
                              "--cpus-per-task=4", "--mem=16G", "--time=2:00:00",
                              "--partition=debug", "--account=proj2", "--gres=gpu:l40s:2"]
    assert checked.loaded.sources["scheduler.time"] == "form"


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("desktop.nope", "1", "form: desktop.nope: not a field of this form"),
    ("hpcdesk_resolution", "wide", "is not WIDTHxHEIGHT"),
    ("hpcdesk_resolution", "0x0", "form: desktop.width: 0 is out of range"),
    ("hpcdesk_resolution", "100000x1", "desktop.width: 100000 is out of range"),
    ("hpcdesk_resolution", "1024x768", "1024x768 is not offered"),
    ("hpcdesk_hours", "-5", "is not a Slurm time"),
    ("hpcdesk_hours", "1:xx", "is not a Slurm time"),
    ("hpcdesk_hours", "13", "longer than this site offers (12 hours)"),
    ("hpcdesk_partition", "nosuchpartition", "invalid partition"),
    ("hpcdesk_account", "other", "invalid account"),
    ("hpcdesk_gpus", "3", "more than this site offers"),
    ("hpcdesk_gpus", "1;id", "is not a whole number"),
    ("hpcdesk_gpu_type", "h100", "invalid GPU type"),
    ("hpcdesk_interface", "vnc", "is not offered"),
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
            form.check(str(path), {**FORM, "hpcdesk_account": bad})
    assert "--account=proj" in form.check(str(path), {**FORM, "hpcdesk_account": "proj"}).native


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
    assert [o[1] for o in attrs["hpcdesk_partition"]["options"]] == ["gpu", "debug"]
    assert [o[1] for o in attrs["hpcdesk_account"]["options"]] == ["proj1", "proj2"]
    assert [o[1] for o in attrs["hpcdesk_gpu_type"]["options"]] == ["", "a100", "l40s"]
    assert (attrs["hpcdesk_gpus"]["max"], attrs["hpcdesk_hours"]["max"]) == (2, 12)
    assert attrs["hpcdesk_hours"]["value"] == 4
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


def test_the_app_needs_the_host_runtime(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("scheduler: {partition: gpu}\nruntime: {kind: apptainer, image: glx}\n")
    with pytest.raises(UsageError, match="runtime.kind: host"):
        app.generate(config.load(str(path)), str(path), tmp_path / "out")
    with pytest.raises(UsageError, match="runtime.kind: host"):
        form.check(str(path), FORM)


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
    assert "--partition=gpu" in json.loads(capsys.readouterr().out)["native"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({**FORM, "hpcdesk_hours": "x"})))
    assert cli.main(["ood", "check", "--site", site]) == 2
    assert "is not a Slurm time" in capsys.readouterr().err


def test_token_auth_serves_webrtc_too(tmp_path: Path) -> None:
    """The agent proves for webrtc too that a token-less client gets nothing (token_gate)."""
    loaded = config.load(None, {"desktop.auth": "token", "desktop.transport": "webrtc"})
    assert loaded.config.desktop.auth == "token"


def test_ood_sessions_use_websockets_whatever_the_site_default(tmp_path: Path) -> None:
    path = tmp_path / "rtc.yaml"
    path.write_text("scheduler: {partition: gpu}\ndesktop: {transport: webrtc}\n")
    assert form.check(str(path), FORM).loaded.config.desktop.transport == "websockets"
