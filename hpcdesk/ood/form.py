"""The OOD form: which fields it has, what the site config lets each one take, and the one
validation of submitted values (the same config layers and checks as the command line)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpcdesk import config
from hpcdesk.encoders import ENCODERS, HARDWARE_ENCODERS
from hpcdesk.errors import UsageError
from hpcdesk.login.jobscript import sbatch_lines
from hpcdesk.schema import SiteConfig, parse_resolution, slurm_time_seconds

SOURCE = "form"
FIELDS = ("hpcdesk_partition", "hpcdesk_account", "hpcdesk_hours", "hpcdesk_gpus",
          "hpcdesk_gpu_type", "hpcdesk_resolution", "hpcdesk_interface", "hpcdesk_encoder")
# Token mode is the only auth that passes OOD's proxy, and only the Selkies interface has it.
INTERFACES = ("selkies",)


@dataclass(frozen=True)
class Offer:
    """What the form offers, from the site config."""

    partitions: list[str]
    accounts: list[str]        # empty: a free text field
    gpu_types: list[str]       # empty: no type choice
    max_gpus: int
    default_gpus: int
    max_hours: int
    default_hours: int
    resolutions: list[str]
    default_resolution: str
    interfaces: tuple[str, ...]
    encoders: tuple[str, ...]


def offer(cfg: SiteConfig) -> Offer:
    o = cfg.ood
    partitions = list(o.partitions) or ([cfg.scheduler.partition] if cfg.scheduler.partition
                                        else [])
    current = f"{cfg.desktop.width}x{cfg.desktop.height}"
    hours = max(1, min(o.max_hours, slurm_time_seconds(cfg.scheduler.time) // 3600))
    encoders = tuple(e for e in ENCODERS if o.max_gpus > 0 or e not in HARDWARE_ENCODERS)
    return Offer(partitions=partitions, accounts=list(o.accounts), gpu_types=list(o.gpu_types),
                 max_gpus=o.max_gpus, default_gpus=min(cfg.scheduler.gpus, o.max_gpus),
                 max_hours=o.max_hours, default_hours=hours, resolutions=list(o.resolutions),
                 default_resolution=current if current in o.resolutions else o.resolutions[0],
                 interfaces=INTERFACES, encoders=encoders)


def _fail(name: str, msg: str, hint: str = "") -> UsageError:
    return UsageError(f"{SOURCE}: {name}: {msg}", hint=hint)


def _text(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _whole(name: str, text: str) -> int:
    if not re.fullmatch(r"\d{1,4}", text):
        raise _fail(name, f"{text!r} is not a whole number")
    return int(text)


def overrides(cfg: SiteConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values -> configuration keys, checked against what the site offers.

    Values are checked as they are; the ranges, patterns and Slurm syntax are checked by
    config.load like any command-line value.
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise _fail(unknown[0], "not a field of this form", hint="fields: " + ", ".join(FIELDS))
    off = offer(cfg)
    out: dict[str, Any] = {
        # What OOD's proxy needs: the token in the fragment, plain HTTP behind the proxy
        # (OOD serves HTTPS to the browser), one WebSocket port (the proxy carries TCP only),
        # and no push channel (nothing waits for it).
        "desktop.auth": "token", "desktop.https": False, "network.push": False,
        "desktop.transport": "websockets",
        "desktop.url_path": "/node/{host}/{port}/" if cfg.ood.proxy == "node" else "/",
    }
    partition = _text(values, "hpcdesk_partition")
    if partition is not None:
        if partition not in off.partitions:
            raise _fail("hpcdesk_partition", f"invalid partition {partition!r}",
                        hint="this site offers: " + (", ".join(off.partitions) or "none"))
        out["scheduler.partition"] = partition
    account = _text(values, "hpcdesk_account")
    if account is not None:
        if off.accounts and account not in off.accounts:
            raise _fail("hpcdesk_account", f"invalid account {account!r}",
                        hint="this site offers: " + ", ".join(off.accounts))
        out["scheduler.account"] = str(values["hpcdesk_account"])  # as sent: checked by load
    hours = _text(values, "hpcdesk_hours")
    if hours is not None:
        out["scheduler.time"] = f"{hours}:00:00"
    gpus_text = _text(values, "hpcdesk_gpus")
    gpus = _whole("hpcdesk_gpus", gpus_text) if gpus_text is not None else off.default_gpus
    if gpus > off.max_gpus:
        raise _fail("hpcdesk_gpus", f"{gpus} is more than this site offers ({off.max_gpus})")
    out["scheduler.gpus"] = gpus
    gpu_type = _text(values, "hpcdesk_gpu_type")
    if gpu_type is not None:
        if gpu_type not in off.gpu_types:
            raise _fail("hpcdesk_gpu_type", f"invalid GPU type {gpu_type!r}",
                        hint="this site offers: " + (", ".join(off.gpu_types) or "none"))
        if gpus:
            out["scheduler.gres"] = f"gpu:{gpu_type}:{gpus}"
    resolution = _text(values, "hpcdesk_resolution")
    if resolution is not None:
        try:
            out["desktop.width"], out["desktop.height"] = parse_resolution(resolution)
        except ValueError as exc:
            raise _fail("hpcdesk_resolution", str(exc)) from None
    for name, key, allowed in (("hpcdesk_interface", "desktop.interface", off.interfaces),
                               ("hpcdesk_encoder", "desktop.encoder", off.encoders)):
        text = _text(values, name)
        if text is not None:
            if text not in allowed:
                raise _fail(name, f"{text!r} is not offered", hint="choose " + ", ".join(allowed))
            out[key] = text
    return out


@dataclass
class Checked:
    loaded: config.LoadedConfig
    native: list[str]   # sbatch arguments for submit.yml's script.native


def check(site: str | None, values: Mapping[str, Any]) -> Checked:
    """Validate form values like the command line's options; raise UsageError (exit 2)."""
    base = config.load(site)
    if base.config.runtime.kind != "host":
        raise UsageError("the Open OnDemand app needs runtime.kind: host (Selkies 2.x token "
                         "mode passes OOD's proxy; the images' Selkies has no token mode)")
    sets = overrides(base.config, values)
    loaded = config.load(site, sets, override_source=SOURCE)
    cfg = loaded.config
    off = offer(base.config)
    if slurm_time_seconds(cfg.scheduler.time) > off.max_hours * 3600:
        raise _fail("hpcdesk_hours", f"{cfg.scheduler.time} is longer than this site offers "
                    f"({off.max_hours} hours)")
    resolution = f"{cfg.desktop.width}x{cfg.desktop.height}"
    if "desktop.width" in sets and resolution not in off.resolutions:
        raise _fail("hpcdesk_resolution", f"{resolution} is not offered",
                    hint="choose " + ", ".join(off.resolutions))
    return Checked(loaded, native_args(cfg))


def native_args(cfg: SiteConfig) -> list[str]:
    """The job's sbatch arguments: the same validated lines as the CLI's job script."""
    lines = sbatch_lines(cfg)
    args = [f"--job-name={lines.job_name}", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={lines.cpus}", f"--mem={lines.memory}", f"--time={lines.time}"]
    args += [f"--{name}={value}" for name, value in lines.options]
    return args + list(lines.extra_args)
