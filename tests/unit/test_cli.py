"""The command line: shared options defined once, every setting flag names a real config key."""

from __future__ import annotations

import pytest

from hpcdesk.arguments import build_parser
from hpcdesk.commands.submit import cli_overrides
from hpcdesk.config import field_meta


def test_every_setting_flag_sets_a_real_key() -> None:
    args = build_parser().parse_args([
        "submit", "-p", "gpu", "-A", "proj", "-q", "high", "-t", "1:00:00", "-c", "2",
        "--mem", "2G", "-G", "0", "-M", "c1", "--constraint", "a100", "--reservation", "r",
        "-r", "1280x720", "--runtime", "apptainer", "--image", "debian", "--interface", "vnc",
        "--encoder", "x264enc", "--connect", "tunnel", "--set", "desktop.dpi=120"])
    out = cli_overrides(args)
    assert out == {
        "scheduler.partition": "gpu", "scheduler.account": "proj", "scheduler.qos": "high",
        "scheduler.time": "1:00:00", "scheduler.cpus": 2, "scheduler.memory": "2G",
        "scheduler.gpus": 0, "scheduler.cluster": "c1", "scheduler.constraint": "a100",
        "scheduler.reservation": "r", "desktop.width": 1280, "desktop.height": 720,
        "runtime.kind": "apptainer", "runtime.image": "debian", "desktop.interface": "vnc",
        "desktop.encoder": "x264enc", "network.connect": "tunnel", "desktop.dpi": 120}
    for key in out:
        field_meta(key)  # raises for a key the schema does not have
    assert cli_overrides(build_parser().parse_args(["submit"])) == {}


@pytest.mark.parametrize("argv", [
    ["submit"], ["status"], ["list"], ["cancel", "x"], ["config", "show"], ["doctor"],
    ["image", "build", "--flavor", "debian"], ["image", "list"],
])
def test_shared_options(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--site", "s", "--set", "a=1", "--set", "b=2",
                                      "--json"])
    assert (args.site, args.set, args.json) == ("s", ["a=1", "b=2"], True)
    assert build_parser().parse_args(argv).set == []  # no list shared between parses
