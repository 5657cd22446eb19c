"""The job script: #SBATCH lines from config, every value quoted, nothing injected runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcdesk import config
from hpcdesk.errors import ConfigError, UsageError
from hpcdesk.login import jobscript
from hpcdesk.quoting import shq

NASTY = ["a'b", 'a"b', "$(touch {m})", "`touch {m}`", "x; touch {m}", "a\\b", "$HOME", "*"]


def test_render_has_sbatch_lines_and_signal(tmp_path: Path) -> None:
    cfg = config.load(None, {"scheduler.partition": "gpu", "scheduler.account": "proj1",
                             "scheduler.gpus": 2, "scheduler.time": "2:00:00",
                             "scheduler.extra_args": ["--exclusive", "--mail-type=END"]}).config
    text = jobscript.render(cfg, "abc123", tmp_path / "s p a c e")
    assert "#SBATCH --partition=gpu\n" in text
    assert "#SBATCH --account=proj1\n" in text
    assert "#SBATCH --gres=gpu:2\n" in text
    assert "#SBATCH --time=2:00:00\n" in text
    assert "#SBATCH --signal=B:USR1@120\n" in text
    assert "#SBATCH --exclusive\n#SBATCH --mail-type=END\n" in text
    assert f"cd {shq(str(tmp_path / 's p a c e'))}\n" in text
    assert "node run --session" in text


def test_no_gres_line_without_gpus(tmp_path: Path) -> None:
    cfg = config.load(None, {"scheduler.gpus": 0}).config
    assert "--gres" not in jobscript.render(cfg, "x", tmp_path)


@pytest.mark.parametrize("template", NASTY)
def test_shell_values_are_passed_literally(tmp_path: Path, template: str) -> None:
    """A hostile session directory and agent command reach the script literally: run it."""
    marker = tmp_path / "injected"
    value = template.format(m=marker)
    sdir = tmp_path / value.replace("/", "_")
    sdir.mkdir()
    probe = tmp_path / "argv.txt"
    agent = tmp_path / "agent.sh"
    agent.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shq(str(probe))}\n')
    agent.chmod(0o755)
    cfg = config.load(None, {"runtime.agent_command": f"{shq(str(agent))} {shq(value)}"}).config
    script = tmp_path / "job.sh"
    script.write_text(jobscript.render(cfg, "sid", sdir))
    subprocess.run(["bash", str(script)], check=True, env={**os.environ, "HOME": str(tmp_path)})
    assert not marker.exists(), "an injected command ran"
    args = probe.read_text().splitlines()
    assert args[0] == value
    assert args[-1] == str(sdir)


@pytest.mark.parametrize("value", ["gpu'", "gpu\nrm", "$(id)", "a b", "`id`", "g;id"])
def test_sbatch_values_with_metacharacters_are_rejected(value: str) -> None:
    with pytest.raises((ConfigError, UsageError)):
        cfg = config.load(None, {"scheduler.partition": value}).config
        jobscript.render(cfg, "x", Path("/tmp"))


def test_template_fails_on_undefined_name() -> None:
    import jinja2

    env = jobscript.environment()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nope }}").render()
