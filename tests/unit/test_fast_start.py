"""`hpcdesk list` and `status` start fast and still mean the same: the merged configuration is
served from the user's private cache (never from one anyone else could have written, never
after a source changed), the command line builds only the invoked subcommand's parser, and
the pyslurm backend asks `sinfo -V` once per installation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcdesk import arguments, cli, config, resources
from hpcdesk.errors import ConfigError
from hpcdesk.scheduler import slurm_pyslurm

pytestmark = pytest.mark.usefixtures("isolated_config")
REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def poison(dpi_from: int, dpi_to: int) -> None:
    """Change the cached desktop.dpi in place, as someone who can write the file could."""
    path = config.cache_path()
    text = path.read_text()
    assert f'"desktop.dpi": {dpi_from}' in text
    path.write_text(text.replace(f'"desktop.dpi": {dpi_from}', f'"desktop.dpi": {dpi_to}'))


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """The key is the file's identity (inode, ctime too), not only its size and mtime."""
    site = write(tmp_path / "site.yaml", "desktop:\n  dpi: 120\n")
    st = site.stat()
    assert config.load(str(site)).config.desktop.dpi == 120
    site.write_text("desktop:\n  dpi: 144\n")  # same size
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert config.load(str(site)).config.desktop.dpi == 144


def test_a_replaced_user_file_is_seen(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", "name: s\n")
    assert config.load(str(site)).config.desktop.dpi == 96
    user = write(tmp_path / "xdg/hpcdesk/config.yaml", "desktop:\n  dpi: 120\n")
    assert config.load(str(site)).config.desktop.dpi == 120
    user.unlink()
    assert config.load(str(site)).config.desktop.dpi == 96


def test_the_cache_is_used_while_private(tmp_path: Path) -> None:
    """The check below is meaningful: a private cache file is what a load returns."""
    site = write(tmp_path / "site.yaml", "desktop:\n  dpi: 120\n")
    config.load(str(site))
    poison(120, 144)
    assert config.load(str(site)).config.desktop.dpi == 144


@pytest.mark.parametrize("who", ["group-writable file", "world-writable file",
                                 "group-writable directory", "someone else's file"])
def test_a_cache_others_could_write_is_ignored(tmp_path: Path, who: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    site = write(tmp_path / "site.yaml", "desktop:\n  dpi: 120\n")
    config.load(str(site))
    poison(120, 144)
    cache = config.cache_path()
    if who == "group-writable file":
        cache.chmod(0o620)
    elif who == "world-writable file":
        cache.chmod(0o602)
    elif who == "group-writable directory":
        cache.parent.chmod(0o770)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    assert config.load(str(site)).config.desktop.dpi == 120
    if who != "someone else's file":
        assert "144" in cache.read_text()  # ignored, and not overwritten either


def test_a_symlinked_cache_file_is_ignored(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", "desktop:\n  dpi: 120\n")
    config.load(str(site))
    poison(120, 144)
    cache = config.cache_path()
    cache.rename(cache.with_name("elsewhere.json"))
    cache.symlink_to("elsewhere.json")
    assert config.load(str(site)).config.desktop.dpi == 120


def test_the_cache_is_private(tmp_path: Path) -> None:
    config.load(str(write(tmp_path / "site.yaml", "name: s\n")))
    assert config.cache_path().stat().st_mode & 0o777 == 0o600
    assert config.cache_path().parent.stat().st_mode & 0o777 == 0o700


def test_set_values_are_keyed_as_typed_and_bad_ones_stay_errors(tmp_path: Path) -> None:
    site = str(write(tmp_path / "site.yaml", "name: s\n"))
    parsed: list[list[str]] = []

    def load(*sets: str) -> config.LoadedConfig:
        def parse() -> dict[str, object]:
            parsed.append(list(sets))
            return {k: config.parse_cli_value(v, k) for k, v in (s.split("=") for s in sets)}
        return config.load_with_sets(site, list(sets), parse)

    assert load("desktop.dpi=120").value("desktop.dpi") == 120
    assert load("desktop.dpi=120").value("desktop.dpi") == 120
    assert load("desktop.dpi=144").config.desktop.dpi == 144
    assert parsed == [["desktop.dpi=120"], ["desktop.dpi=144"]]  # the second: a hit
    for _ in range(2):
        with pytest.raises(ConfigError, match="desktop.dpi"):
            load("desktop.dpi=1")


@pytest.mark.parametrize("site", sorted(p.stem for p in
                                        resources.data_dir("site-configs").glob("*.yaml")))
def test_a_cached_load_is_the_same_configuration(site: str) -> None:
    fresh = config.load(site)
    cached = config.load(site)
    assert cached is not fresh and cached._config is None  # served from the cache
    assert cached.value("scheduler.backend") == fresh.config.scheduler.backend
    assert cached.config == fresh.config
    assert cached.sources == fresh.sources and cached.site_path == fresh.site_path
    assert cached.flat() == fresh.flat()


def run_cli(tmp_path: Path, *argv: str, out: list[str] | None = None) -> list[str]:
    """`hpcdesk ARGV` in a fresh interpreter; the hpcdesk/yaml modules it imported (its other
    output lines go to `out`)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(REPO)}
    env.pop("HPCDESK_SITE", None)
    code = ("import sys; from hpcdesk.cli import main; rc = main(sys.argv[1:]); "
            "print('MODULES', *sorted(m for m in sys.modules if m.split('.')[0] in "
            "('hpcdesk', 'yaml', 'jinja2', 'paramiko', 'aiohttp', 'pyslurm', 'dataclasses'))); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES"))
    if out is not None:
        out.extend(x for x in proc.stdout.splitlines() if not x.startswith("MODULES"))
    return line.split()[1:]


@pytest.mark.parametrize("argv", [["list"], ["list", "--all", "--json"],
                                  ["list", "--set", "scheduler.backend=pyslurm"]])
def test_list_with_a_warm_cache_imports_no_yaml_schema_or_backend(
        tmp_path: Path, argv: list[str]) -> None:
    site = write(tmp_path / "site.yaml", f"session_root: {tmp_path / 'sessions'}\n"
                 "scheduler:\n  backend: pyslurm\n")
    run_cli(tmp_path, *argv, "--site", str(site))  # fills the cache
    modules = run_cli(tmp_path, *argv, "--site", str(site))
    assert "yaml" not in modules
    assert "hpcdesk.schema" not in modules
    assert "dataclasses" not in modules  # with inspect, ast and dis: ~10 ms at every start
    assert not [m for m in modules if m.startswith(("hpcdesk.scheduler.slurm_", "pyslurm"))]
    assert not [m for m in modules if m.split(".")[0] in ("jinja2", "paramiko", "aiohttp")]
    # and the cache is keyed by the site file: an edit is read (YAML and all) at once
    write(site, f"session_root: {tmp_path / 'sessions'}\n")
    assert "yaml" in run_cli(tmp_path, *argv, "--site", str(site))


def test_each_subcommand_alone_is_the_same_parser() -> None:
    whole = arguments.build_parser()
    subs = next(a for a in whole._actions if a.dest == "command").choices  # type: ignore[union-attr]
    assert subs is not None and set(subs) == set(arguments.SUBCOMMANDS) == set(cli.COMMANDS)
    for name, parser in subs.items():
        alone = arguments.build_parser(name)
        only = next(a for a in alone._actions if a.dest == "command").choices
        assert list(only) == [name]  # type: ignore[arg-type]
        assert only[name].format_help() == parser.format_help()  # type: ignore[index]


def test_main_builds_only_the_invoked_subcommand(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    built: list[str | None] = []
    real = arguments.build_parser
    monkeypatch.setattr(arguments, "build_parser", lambda c=None: built.append(c) or real(c))
    with pytest.raises(SystemExit):
        cli.main(["list", "--help"])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert built == ["list", None]
    assert "submit" in capsys.readouterr().out  # the top level still lists every command


# Every word the two commands' parsers know, and words they don't, in every order quick_args
# might meet them: each argv either reads as argparse reads it or goes to argparse.
WORDS = ["-a", "--all", "--json", "--wait", "--site", "s.yaml", "--site=", "--site=x",
         "--set", "desktop.dpi=120", "--set=a=b", "k3x9fq", "", "-", "--", "-1", "--js",
         "--al", "--json=1", "-h", "--help", "-aa", "--set", "--site", "x=y"]


def argvs() -> list[list[str]]:
    import itertools
    import random

    rng = random.Random(23)
    out = [[c] for c in cli.QUICK]
    for command in cli.QUICK:
        for n in (1, 2, 3):
            out += [[command, *w] for w in itertools.product(WORDS, repeat=n) if n < 3
                    or rng.random() < 0.05]
    return out


def argparse_reading(argv: list[str]) -> dict[str, object] | None:
    """What argparse makes of argv: its attributes, or None where it exits (usage, help)."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(arguments.build_parser(argv[0]).parse_args(argv))
        except SystemExit:
            return None


def test_quick_args_reads_as_argparse_reads() -> None:
    taken = 0
    for argv in argvs():
        quick = cli.quick_args(argv)
        if quick is None:
            continue
        taken += 1
        assert vars(quick) == argparse_reading(argv), argv
    assert taken > 200  # the everyday forms are taken, not left to argparse


def test_quick_args_takes_the_everyday_forms() -> None:
    for argv in (["list"], ["list", "--all", "--json"], ["status", "k3x9fq", "--json"],
                 ["status", "--site", "dev", "--set", "scheduler.backend=pyslurm", "--wait"],
                 ["list", "--site=dev", "-a", "--set=desktop.dpi=96", "--set", "x.y=1"]):
        quick = cli.quick_args(argv)
        assert quick is not None and vars(quick) == argparse_reading(argv)
    for argv in (["list", "--help"], ["status", "-h"], ["list", "--js"], ["status", "a", "b"],
                 ["list", "--site"], ["status", "--set", "--json"], ["submit"], [], ["cancel", "x"]):
        assert cli.quick_args(argv) is None, argv


def test_quick_args_knows_every_option_of_list_and_status() -> None:
    """An option added to list or status in arguments.py must be added to cli.QUICK too (or
    every use of it would pay for argparse): the two name the same options."""
    for command, (flags, positional) in cli.QUICK.items():
        parser = arguments.build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[index]
        options = {o for a in sub._actions for o in a.option_strings} - {"-h", "--help"}
        assert options == set(flags) | set(cli._VALUED), command
        positionals = [a.dest for a in sub._actions if not a.option_strings]
        assert positionals == ([positional] if positional else []), command


def test_list_and_status_do_not_import_argparse(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", f"session_root: {tmp_path / 'sessions'}\n")
    for argv in (["list", "--json"], ["status", "--json"]):
        run_cli(tmp_path, "list", "--site", str(site))
        code = ("import sys; from hpcdesk.cli import main; "
                "rc = main(sys.argv[1:]); print('ARGPARSE', 'argparse' in sys.modules)")
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
               "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", code, *argv, "--site", str(site)],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert "ARGPARSE False" in proc.stdout, (argv, proc.stdout, proc.stderr)


def fake_sinfo(bindir: Path, calls: Path, version: str) -> None:
    write(bindir / "sinfo", f"#!/bin/sh\necho x >> {calls}\necho 'slurm {version}'\n")
    (bindir / "sinfo").chmod(0o755)


def test_the_slurm_release_is_asked_once(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = tmp_path / "calls"
    fake_sinfo(tmp_path / "bin", calls, "22.05.8")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert slurm_pyslurm._running_slurm() == (22, 5, 8)
    assert slurm_pyslurm._running_slurm() == (22, 5, 8)
    assert calls.read_text().count("x") == 1
    fake_sinfo(tmp_path / "bin", calls, "23.02.1")  # Slurm upgraded: another sinfo
    assert slurm_pyslurm._running_slurm() == (23, 2, 1)
    assert calls.read_text().count("x") == 2
    cached = json.loads((tmp_path / "cache/hpcdesk/slurm-release.json").read_text())
    assert [e["value"] for e in cached["entries"]] == [[23, 2, 1], [22, 5, 8]]


def ended_session(tmp_path: Path, policy: dict[str, object] | None) -> str:
    """A session that has ended (its final state recorded), whose request recorded `policy`."""
    from hpcdesk import session as sessions

    s = sessions.create(tmp_path / "sessions")
    s.update_meta(job_id="41", final={"state": "completed", "detail": "time limit"})
    request = {"session_id": s.id, "user": "someone"}
    if policy is not None:
        request["policy"] = policy
    (s.dir / "request.json").write_text(json.dumps(request))
    return s.id


RECORDED = {"clipboard": "out", "file_transfers": "download", "transfer_limit_mbps": 20.0,
            "printing": True, "audit_url": None, "sharing": "off", "microphone": False,
            "share_max": "2:00:00"}


def test_status_shows_the_recorded_policy_without_the_schema(tmp_path: Path) -> None:
    """`status ID` of an ended session: no scheduler, no schema, no dataclasses; its policy
    line and `--json` policy are what the request recorded at submit."""
    site = write(tmp_path / "site.yaml", f"session_root: {tmp_path / 'sessions'}\n")
    sid = ended_session(tmp_path, RECORDED)
    run_cli(tmp_path, "status", sid, "--site", str(site))  # fills the cache
    lines: list[str] = []
    modules = run_cli(tmp_path, "status", sid, "--site", str(site), out=lines)
    assert "hpcdesk.schema" not in modules and "dataclasses" not in modules
    assert "hpcdesk.request" not in modules and "yaml" not in modules
    assert f"session {sid}: completed (time limit)" in lines
    assert ("  policy:   clipboard out, file transfers download (at most 20 Mbit/s), printing "
            "on, sharing off (at most 2:00:00), audit to the session's audit.jsonl") in lines
    as_json: list[str] = []
    run_cli(tmp_path, "status", sid, "--json", "--site", str(site), out=as_json)
    assert json.loads("\n".join(as_json))["policy"] == RECORDED


def test_status_never_guesses_a_policy_the_request_did_not_record(tmp_path: Path) -> None:
    """A desktop started before data policies (no policy in its request) shows no policy line
    and `"policy": null`; one started before a setting existed shows it as not recorded."""
    site = write(tmp_path / "site.yaml", f"session_root: {tmp_path / 'sessions'}\n")
    before = ended_session(tmp_path, None)
    lines: list[str] = []
    run_cli(tmp_path, "status", before, "--site", str(site), out=lines)
    assert not [x for x in lines if "policy" in x]
    as_json: list[str] = []
    run_cli(tmp_path, "status", before, "--json", "--site", str(site), out=as_json)
    assert json.loads("\n".join(as_json))["policy"] is None
    older = ended_session(tmp_path, {k: v for k, v in RECORDED.items() if k != "printing"})
    lines.clear()
    run_cli(tmp_path, "status", older, "--site", str(site), out=lines)
    assert any("printing not recorded, sharing off" in x for x in lines), lines
