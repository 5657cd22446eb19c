"""Render the Slurm job script from jobscripts/ (jinja2, StrictUndefined, one quoting filter)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from hpcdesk import __version__, resources
from hpcdesk.quoting import sbatch_value, shq
from hpcdesk.schema import SiteConfig

TEMPLATE = "desktop.sbatch.j2"


@dataclass
class SbatchLines:
    job_name: str
    cpus: int
    memory: str
    time: str
    signal_lead: int
    options: list[tuple[str, str]] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)


def sbatch_lines(cfg: SiteConfig) -> SbatchLines:
    s = cfg.scheduler
    lines = SbatchLines(
        job_name=sbatch_value("job_name", s.job_name),
        cpus=s.cpus,
        memory=sbatch_value("memory", s.memory),
        time=sbatch_value("time", s.time),
        signal_lead=s.signal_lead,
    )
    gres = s.gres or (f"gpu:{s.gpus}" if s.gpus > 0 else None)
    for name, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                        ("gres", gres), ("constraint", s.constraint),
                        ("reservation", s.reservation)):
        if value:
            lines.options.append((name, sbatch_value(name, value)))
    for arg in s.extra_args:
        _flag, _, value = arg.partition("=")
        if value:
            sbatch_value("extra_args", value)
        lines.extra_args.append(arg)
    return lines


def agent_argv(cfg: SiteConfig) -> list[str]:
    if cfg.runtime.agent_command:
        return shlex.split(cfg.runtime.agent_command)
    return [sys.executable, "-m", "hpcdesk"]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.data_dir("jobscripts"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell, not HTML: values go through the q filter
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = shq
    return env


def render(cfg: SiteConfig, session_id: str, session_dir: Path) -> str:
    return environment().get_template(TEMPLATE).render(
        version=__version__,
        session_id=session_id,
        session_dir=str(session_dir),
        sbatch=sbatch_lines(cfg),
        setup=cfg.runtime.setup,
        agent_argv=agent_argv(cfg),
    )
