"""The OOD form: which fields it has, what the site config lets each one take, and the one
validation of submitted values (the same config layers and checks as the command line)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpcdesk import config
from hpcdesk.checks import Check
from hpcdesk.encoders import ENCODERS, HARDWARE_ENCODERS
from hpcdesk.errors import UsageError
from hpcdesk.login.jobscript import sbatch_lines
from hpcdesk.schema import SiteConfig, parse_resolution, slurm_time_seconds

SOURCE = "form"
# Open OnDemand's own smart attributes where they fit (the dashboard turns them into the
# adapter's sbatch options: bc_queue -> -p, bc_account -> -A, bc_num_hours -> -t,
# bc_email_on_started -> --mail-type BEGIN), then hpcdesk's.
FIELDS = ("bc_queue", "bc_account", "bc_num_hours", "hpcdesk_cores", "hpcdesk_memory",
          "hpcdesk_gpus", "hpcdesk_gpu_type", "hpcdesk_resolution", "hpcdesk_encoder",
          "bc_email_on_started")
# The options those smart attributes give sbatch themselves: submit.yml's native list must
# not repeat them.
CARRIED = {"bc_queue": "partition", "bc_account": "account"}


@dataclass(frozen=True)
class Offer:
    """What the form offers, from the site file alone."""

    partitions: list[str]
    accounts: list[str]        # empty: a free text field
    gpu_types: list[str]       # empty: no type choice
    max_gpus: int
    default_gpus: int
    max_hours: int
    default_hours: int
    max_cores: int
    default_cores: int
    max_memory_gb: int
    default_memory_gb: int
    resolutions: list[str]
    default_resolution: str
    encoders: tuple[str, ...]


def memory_gb(text: str) -> int:
    """Slurm --mem syntax (no suffix: megabytes) in whole gigabytes, rounded up."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Slurm memory size")
    mb = int(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]
    return max(1, math.ceil(mb / 1024))


def offer(cfg: SiteConfig) -> Offer:
    o, s = cfg.ood, cfg.scheduler
    partitions = list(o.partitions) or ([s.partition] if s.partition else [])
    current = f"{cfg.desktop.width}x{cfg.desktop.height}"
    hours = max(1, min(o.max_hours, slurm_time_seconds(s.time) // 3600))
    encoders = tuple(e for e in ENCODERS if o.max_gpus > 0 or e not in HARDWARE_ENCODERS)
    max_cores = o.max_cores or s.cpus
    mem = memory_gb(s.memory)
    max_mem = o.max_memory_gb or mem
    return Offer(partitions=partitions, accounts=list(o.accounts), gpu_types=list(o.gpu_types),
                 max_gpus=o.max_gpus, default_gpus=min(s.gpus, o.max_gpus),
                 max_hours=o.max_hours, default_hours=hours,
                 max_cores=max_cores, default_cores=min(s.cpus, max_cores),
                 max_memory_gb=max_mem, default_memory_gb=min(mem, max_mem),
                 resolutions=list(o.resolutions),
                 default_resolution=current if current in o.resolutions else o.resolutions[0],
                 encoders=encoders)


def _fail(name: str, msg: str, hint: str = "") -> UsageError:
    return UsageError(f"{SOURCE}: {name}: {msg}", hint=hint)


def _text(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _whole(name: str, text: str) -> int:
    if not re.fullmatch(r"\d{1,6}", text):
        raise _fail(name, f"{text!r} is not a whole number")
    return int(text)


def _within(values: Mapping[str, Any], name: str, default: int, low: int, high: int,
            what: str) -> int:
    text = _text(values, name)
    n = _whole(name, text) if text is not None else default
    if n < low:
        raise _fail(name, f"{n} is less than {low}")
    if n > high:
        raise _fail(name, f"{n} is more than this site offers ({high}{what})")
    return n


def overrides(cfg: SiteConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values -> configuration keys, checked against what the site file offers.

    The ranges, patterns and Slurm syntax are then checked by config.load like any
    command-line value. Each smart attribute is read as the dashboard reads it (a blank
    bc_num_hours is 1 hour; bc_queue and bc_account are stripped), so what is checked here is
    what the dashboard submits.
    """
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise _fail(unknown[0], "not a field of this form", hint="fields: " + ", ".join(FIELDS))
    off = offer(cfg)
    out: dict[str, Any] = {
        # What OOD's proxy needs: the token in the fragment (the proxy drops Authorization),
        # one WebSocket port (it carries HTTP and WebSockets only), no push channel (nothing
        # waits for it), and HTTPS exactly when the route is one of OOD's secure ones.
        "desktop.auth": "token", "network.push": False, "desktop.interface": "selkies",
        "desktop.transport": "websockets", "desktop.https": secure_route(cfg),
        # node routes keep their prefix: Selkies is told its subfolder.
        "desktop.url_path": route_uri(cfg) + "/{host}/{port}/"
        if cfg.ood.proxy.endswith("-node") or cfg.ood.proxy == "node" else "/",
    }
    partition = _text(values, "bc_queue")
    if partition is not None:
        if partition not in off.partitions:
            raise _fail("bc_queue", f"invalid partition {partition!r}",
                        hint="this site offers: " + (", ".join(off.partitions) or "none"))
        out["scheduler.partition"] = partition
    account = _text(values, "bc_account")
    if account is not None:
        if off.accounts and account not in off.accounts:
            raise _fail("bc_account", f"invalid account {account!r}",
                        hint="this site offers: " + ", ".join(off.accounts))
        out["scheduler.account"] = account  # checked by load like the command line's
    hours = _text(values, "bc_num_hours") or "1"  # the dashboard submits 1 hour for a blank
    if not re.fullmatch(r"\d{1,6}", hours):
        raise _fail("bc_num_hours", f"{hours!r} is not a whole number of hours")
    if not 1 <= int(hours) <= off.max_hours:
        raise _fail("bc_num_hours", f"{int(hours)} hours is not between 1 and what this site "
                    f"offers ({off.max_hours} hours)")
    out["scheduler.time"] = f"{int(hours)}:00:00"
    out["scheduler.cpus"] = _within(values, "hpcdesk_cores", off.default_cores, 1,
                                    off.max_cores, " cores")
    out["scheduler.memory"] = "{}G".format(_within(values, "hpcdesk_memory",
                                                   off.default_memory_gb, 1,
                                                   off.max_memory_gb, " GB"))
    gpus = _within(values, "hpcdesk_gpus", off.default_gpus, 0, off.max_gpus, "")
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
    encoder = _text(values, "hpcdesk_encoder")
    if encoder is not None:
        if encoder not in off.encoders:
            raise _fail("hpcdesk_encoder", f"{encoder!r} is not offered",
                        hint="choose " + ", ".join(off.encoders))
        out["desktop.encoder"] = encoder
    mail = _text(values, "bc_email_on_started")
    if mail is not None and mail not in ("0", "1"):
        raise _fail("bc_email_on_started", f"{mail!r} is not 0 or 1")
    return out


def route_uri(cfg: SiteConfig) -> str:
    """The portal's proxy route the view links to (ood_portal.yml's *_uri)."""
    return cfg.ood.proxy_uri or "/" + cfg.ood.proxy


def secure_route(cfg: SiteConfig) -> bool:
    """OOD's secure_* routes: mod_ood_proxy speaks https/wss to the node."""
    return cfg.ood.proxy.startswith("secure-")


def portal_warnings(cfg: SiteConfig) -> list[tuple[str, str]]:
    """What the site file lacks for the app to work well through the portal, as (what, what
    to do); `ood generate` and `doctor` say it."""
    out = []
    if not cfg.desktop.allowed_origins:
        out.append(("desktop.allowed_origins is not set in the site file: Selkies refuses the "
                    "WebSocket that comes through the portal (403 'disallowed Origin')",
                    "set it to the portal's origin, e.g. desktop.allowed_origins: "
                    "[\"https://ondemand.example.org\"]"))
    if not cfg.ood.proxy.startswith("secure-"):
        out.append((f"ood.proxy: {cfg.ood.proxy} sends the session token and every keystroke "
                    "from the portal to the node in clear",
                    "use ood.proxy: secure-rnode (with secure_rnode_uri in ood_portal.yml), "
                    "the recommended setup"))
    return out


def portal_checks(loaded: config.LoadedConfig) -> list[Check]:
    """What the Open OnDemand app needs from the site file (a site that sets any ood.* key or
    desktop.allowed_origins offers it)."""
    offers = any(k.startswith("ood.") or k == "desktop.allowed_origins"
                 for k, src in loaded.sources.items() if src.startswith("site file"))
    if not offers:
        return [Check("Open OnDemand", "skip", "the site file sets no ood.* key (no OOD app)")]
    found = portal_warnings(loaded.config)
    if not found:
        return [Check("Open OnDemand", "ok", f"portal origin(s) "
                      f"{', '.join(loaded.config.desktop.allowed_origins)}; route "
                      f"{loaded.config.ood.proxy}")]
    return [Check("Open OnDemand", "warn", what, fix) for what, fix in found]


@dataclass
class Checked:
    loaded: config.LoadedConfig
    native: list[str]   # sbatch arguments for submit.yml's script.native


def check(site: str | None, values: Mapping[str, Any]) -> Checked:
    """Validate form values like the command line's options; raise UsageError (exit 2)."""
    # The site file and the form only: the user's own config file may not widen the form.
    base = config.load(site, user_file=False)
    sets = overrides(base.config, values)
    loaded = config.load(site, sets, override_source=SOURCE, user_file=False)
    cfg = loaded.config
    off = offer(base.config)
    resolution = f"{cfg.desktop.width}x{cfg.desktop.height}"
    if "desktop.width" in sets and resolution not in off.resolutions:
        raise _fail("hpcdesk_resolution", f"{resolution} is not offered",
                    hint="choose " + ", ".join(off.resolutions))
    carried = {option for name, option in CARRIED.items() if name in sets_fields(values)}
    return Checked(loaded, native_args(cfg, carried))


def sets_fields(values: Mapping[str, Any]) -> set[str]:
    """The smart attributes the dashboard turns into sbatch options itself (non-blank)."""
    return {name for name in CARRIED if _text(values, name) is not None}


def native_args(cfg: SiteConfig, carried: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The job's sbatch arguments: the same validated lines as the CLI's job script, less the
    time limit (bc_num_hours always gives it) and what the other smart attributes carry."""
    lines = sbatch_lines(cfg)
    args = [f"--job-name={lines.job_name}", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={lines.cpus}", f"--mem={lines.memory}"]
    args += [f"--{name}={value}" for name, value in lines.options if name not in carried]
    return args + list(lines.extra_args)
