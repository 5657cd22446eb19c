"""Site configuration: layers, provenance, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk import config
from hpcdesk.errors import ConfigError

pytestmark = pytest.mark.usefixtures("isolated_config")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_layers_and_sources(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", "scheduler:\n  partition: gpu\n  cpus: 8\n")
    write(tmp_path / "xdg/hpcdesk/config.yaml", "scheduler:\n  cpus: 6\ndesktop:\n  dpi: 120\n")
    loaded = config.load(str(site), {"desktop.dpi": 144})
    cfg = loaded.config
    assert cfg.scheduler.partition == "gpu"
    assert cfg.scheduler.cpus == 6
    assert cfg.desktop.dpi == 144
    assert cfg.desktop.width == 1920
    assert loaded.sources["scheduler.partition"] == f"site file {site}"
    assert loaded.sources["scheduler.cpus"].startswith("user file ")
    assert loaded.sources["desktop.dpi"] == "command line"
    assert loaded.sources["desktop.width"] == config.DEFAULT_SOURCE
    shown = config.render_show(loaded)
    assert "scheduler.partition" in shown and f"site file {site}" in shown


def test_site_by_name_from_system_dir(tmp_path: Path) -> None:
    write(tmp_path / "etc/sites/mysite.yaml", "name: mysite\n")
    assert config.load("mysite").config.name == "mysite"


def test_bundled_devcluster_site_is_valid() -> None:
    cfg = config.load("devcluster").config
    assert cfg.network.address == "interface" and cfg.network.interface == "eth0"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("desktop:\n  widht: 1000\n", "desktop.widht: unknown key; allowed here:"),
        ("desktop:\n  width: wide\n", "desktop.width: expected an integer"),
        ("desktop:\n  width: 0\n", "desktop.width: 0 is out of range; allowed 640..7680"),
        ("desktop:\n  width: 100000\n", "desktop.width: 100000 is out of range"),
        ("scheduler:\n  time: -5\n", "scheduler.time"),
        ("scheduler:\n  time: 'two hours'\n", "is not a Slurm time"),
        ("scheduler:\n  partition: 'gpu; rm -rf ~'\n", "scheduler.partition"),
        ("desktop:\n  encoder: fastest\n", "one of 'auto'"),
        ("desktop: [1, 2]\n", "desktop: expected a mapping"),
        ("desktop:\n  audio: 'yes'\n", "expected true or false"),
        ("runtime:\n  kind: apptainer\n", "runtime.image: must name an image"),
        ("scheduler:\n  time: '5'\n  signal_lead: 200\n", "more than half the time limit"),
        ("desktop:\n  timezone: \"Europe/Berlin\\nrm\"\n", "single line"),
        ("scheduler: {extra_args: ['--x=$(id)']}\n", "list item"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, yaml_text: str, needle: str) -> None:
    site = write(tmp_path / "bad.yaml", yaml_text)
    with pytest.raises(ConfigError) as err:
        config.load(str(site))
    assert str(site) in str(err.value)
    assert needle in str(err.value)
    assert err.value.exit_code == 2


def test_cli_override_errors_and_admin_only_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="command line: desktop.height: 1 is out of range"):
        config.load(None, {"desktop.height": 1})
    with pytest.raises(ConfigError, match="command line: nope.key: unknown key"):
        config.load(None, {"nope.key": 1})
    with pytest.raises(ConfigError, match="only the site file may set this"):
        config.load(None, {"runtime.setup": ["touch /tmp/x"]})
    write(tmp_path / "xdg/hpcdesk/config.yaml", "runtime:\n  setup: ['id']\n")
    with pytest.raises(ConfigError, match="only the site file may set this"):
        config.load(None)
    site = write(tmp_path / "site.yaml", "runtime:\n  setup: ['module load selkies']\n")
    (tmp_path / "xdg/hpcdesk/config.yaml").unlink()
    assert config.load(str(site)).config.runtime.setup == ["module load selkies"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 5400), ("10:30", 630), ("1:00:00", 3600), ("2-12", 216000), ("1-00:00:01", 86401),
])
def test_slurm_time(text: str, seconds: int) -> None:
    from hpcdesk.schema import slurm_time_seconds

    assert slurm_time_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0x0", "100000x1", "1920", "axb", "1920x"])
def test_bad_resolution(text: str) -> None:
    with pytest.raises(ConfigError):
        w, h = config.parse_resolution(text)
        config.load(None, {"desktop.width": w, "desktop.height": h})


def test_unknown_site() -> None:
    with pytest.raises(ConfigError, match="unknown site 'nosuchsite'"):
        config.load("nosuchsite")


def test_reference_lists_every_key() -> None:
    ref = config.render_reference()
    for key in ("scheduler.partition", "desktop.encoder", "network.login_address",
                "timeouts.start"):
        assert f"`{key}`" in ref


def test_validated_layers_are_cached_until_a_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = write(tmp_path / "site.yaml", "desktop:\n  dpi: 120\n")
    assert config.load(str(site)).config.desktop.dpi == 120
    assert config.cache_path().stat().st_mode & 0o777 == 0o600
    calls: list[Path] = []
    real = config._read_yaml
    monkeypatch.setattr(config, "_read_yaml", lambda p: calls.append(p) or real(p))
    assert config.load(str(site)).config.desktop.dpi == 120
    assert calls == []                                   # served from the cache
    write(tmp_path / "site.yaml", "desktop:\n  dpi: 144\n")
    assert config.load(str(site)).config.desktop.dpi == 144
    assert calls == [site]                               # the edit was seen
    write(tmp_path / "site.yaml", "desktop:\n  dpi: 1\n")
    with pytest.raises(ConfigError, match="desktop.dpi"):
        config.load(str(site))                           # and a bad edit is still an error


def test_a_set_value_means_what_was_typed(tmp_path: Path) -> None:
    """`--set scheduler.time=2:00:00` is two hours, not YAML 1.1's base-60 integer 7200 (which
    Slurm reads as 7200 minutes, longer than an 8 hour partition); an account stays "0123"."""
    from hpcdesk.commands.common import overrides_from_sets
    from hpcdesk.scheduler.slurm_cli import parse_partitions
    from hpcdesk.scheduler.unstartable import check_request

    sets = ["scheduler.time=2:00:00", "scheduler.account=0123", "desktop.dpi=120",
            "scheduler.reservation=null"]
    cfg = config.load(None, overrides_from_sets(sets)).config
    assert cfg.scheduler.time == "2:00:00"
    assert cfg.scheduler.account == "0123"
    assert cfg.desktop.dpi == 120 and cfg.scheduler.reservation is None
    gpu = parse_partitions("PartitionName=gpu Default=YES MaxTime=08:00:00 State=UP\n")
    assert check_request(gpu, None, cfg.scheduler.time) is None


def test_a_site_file_time_stays_a_slurm_time(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", "scheduler:\n  time: 2:00:00\n  account: 0123\n"
                 "  cpus: 8\n")
    cfg = config.load(str(site)).config
    assert (cfg.scheduler.time, cfg.scheduler.account, cfg.scheduler.cpus) == (
        "2:00:00", "0123", 8)
