"""Layered site configuration: defaults < site file < user file < command line.

Every layer is validated against `schema.py` when it is read, so an error names the file, the
key path and what is allowed. The merged result remembers where each value came from.

The merged, validated result is kept in the user's private cache (user_cache.py), keyed by the
identity of every source: the site and user files (device, inode, size, mtime, ctime), the
`--set` values or overrides, and hpcdesk's own version and code. A command served from it
reads one small JSON file: no YAML, no validation, and (until something asks for `.config`)
not even the schema. Any change to a source is a miss, and the miss is this same loader.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from hpcdesk import __version__, resources, user_cache
from hpcdesk.errors import ConfigError

if TYPE_CHECKING:  # schema and dataclasses are imported where used: a cached load needs neither
    import dataclasses

    from hpcdesk.schema import SiteConfig

DEFAULT_SOURCE = "built-in default"
SYSTEM_DIRS = ("/etc/hpcdesk",)


CACHE_FILE = "config.json"  # in user_cache.cache_dir()


class LoadedConfig:
    """The merged configuration: `config` (the schema's SiteConfig), `sources` (where each
    value came from: "desktop.width" -> "site file /etc/hpcdesk/site.yaml") and the site file.
    Served from the cache it holds the validated values by key, and builds `config` from them
    on first use; `value(key)` reads one without building it."""

    def __init__(self, config: SiteConfig | None, sources: dict[str, str],
                 site_path: Path | None, values: dict[str, Any] | None = None) -> None:
        if config is None and values is None:
            raise ValueError("LoadedConfig needs the config or its values")
        self._config = config
        self._values = values
        self.sources = sources
        self.site_path = site_path

    @property
    def config(self) -> SiteConfig:
        if self._config is None:
            from hpcdesk.schema import SiteConfig

            assert self._values is not None
            self._config = _build(SiteConfig, self._values)
        return self._config

    def value(self, key: str) -> Any:
        """One setting by its dotted key ("scheduler.backend")."""
        if self._config is None:
            assert self._values is not None
            return self._values[key]
        obj: Any = self._config
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def flat(self) -> dict[str, Any]:
        if self._config is None:
            assert self._values is not None
            return dict(self._values)
        import dataclasses

        return dict(_flatten(dataclasses.asdict(self._config)))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    import dataclasses

    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Check one value against its schema type and limits; ValueError says what is allowed."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner, meta)
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool):
            raise ValueError(f"{value!r} is not allowed; use {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected {_type_name(tp)}, got {type(value).__name__}")
        (item_tp,) = get_args(tp)
        out = [_coerce(v, item_tp, {}) for v in value]
        pat = meta.get("item_pattern")
        for item in out:
            if pat and not re.fullmatch(pat, item):
                raise ValueError(f"list item {item!r} does not match {pat}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads `time: 90` or `memory: 16` as numbers
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        if "\n" in value or "\x00" in value:
            raise ValueError("must be a single line")
        pat = meta.get("pattern")
        if pat and not re.fullmatch(pat, value):
            raise ValueError(f"{value!r} is not allowed (must match {pat})")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{value!r} is out of range; allowed {lo}..{hi}")
    check = meta.get("check")
    if check:
        from hpcdesk.schema import CHECKS

        CHECKS[check](value)
    return value


def validate_layer(data: Any, source: str, cls: type | None = None,
                   prefix: str = "") -> dict[str, Any]:
    """Validate one layer (a nested mapping) and return it flattened: {"a.b": value}."""
    import dataclasses

    if cls is None:
        from hpcdesk.schema import SiteConfig as cls
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the top level"
        got = type(data).__name__
        raise ConfigError(f"{source}: {where}: expected a mapping of keys, got {got}")
    out: dict[str, Any] = {}
    fields = _fields(cls)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: {path}: unknown key; allowed here: {allowed}")
        tp, f = fields[key]
        if dataclasses.is_dataclass(tp):
            out.update(validate_layer(value, source, tp, path + "."))  # type: ignore[arg-type]
            continue
        try:
            out[path] = _coerce(value, tp, f.metadata)
        except ValueError as exc:
            raise ConfigError(f"{source}: {path}: {exc}") from None
    return out


def _build(cls: type, flat: Mapping[str, Any], prefix: str = "") -> Any:
    import dataclasses

    kwargs = {}
    for name, (tp, _f) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, flat, f"{prefix}{name}.")  # type: ignore[arg-type]
        elif f"{prefix}{name}" in flat:
            kwargs[name] = flat[f"{prefix}{name}"]
    return cls(**kwargs)


def field_meta(path: str) -> tuple[Any, Mapping[str, Any]]:
    from hpcdesk.schema import SiteConfig

    cls: Any = SiteConfig
    *parents, last = path.split(".")
    for p in parents:
        cls = _fields(cls)[p][0]
    tp, f = _fields(cls)[last]
    return tp, f.metadata


def _yaml() -> Any:
    import yaml  # only when a file or --set value must be parsed (cold start of list/status)

    return yaml


# YAML 1.1 reads 2:00:00 as the base-60 integer 7200 (and 0123 as octal): Slurm times and ids
# must stay what was typed. Numbers are plain decimal (or 0x hex), as YAML 1.2 has them.
_INT = r"[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+"
_FLOAT = (r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


@functools.cache
def _loader() -> Any:
    yaml = _yaml()
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    numbers = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    loader: Any = type("HpcdeskLoader", (base,), {})
    loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in numbers]
        for first, resolvers in base.yaml_implicit_resolvers.items()}
    loader.add_implicit_resolver(numbers[0], re.compile(f"^(?:{_INT})$"), list("-+0123456789"))
    loader.add_implicit_resolver(numbers[1], re.compile(f"^(?:{_FLOAT})$"),
                                 list("-+0123456789."))
    return loader


def _yaml_load(text: str) -> Any:
    return _yaml().load(text, Loader=_loader())


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return _yaml_load(text)
    except _yaml().YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None


def find_site(site: str | None) -> Path | None:
    """Resolve --site NAME|PATH, then HPCDESK_SITE, then /etc/hpcdesk/site.yaml."""
    site = site or os.environ.get("HPCDESK_SITE")
    if not site:
        default = Path(SYSTEM_DIRS[0]) / "site.yaml"
        return default if default.exists() else None
    if "/" in site or site.endswith((".yaml", ".yml")):
        path = Path(site).expanduser()
        if not path.is_file():
            raise ConfigError(f"site file {path} does not exist")
        return path
    candidates = [Path(d) / "sites" / f"{site}.yaml" for d in SYSTEM_DIRS]
    candidates += [Path(d) / f"{site}.yaml" for d in SYSTEM_DIRS]
    candidates.append(resources.data_dir("site-configs") / f"{site}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"unknown site {site!r}; looked for {tried}",
                      hint="pass --site /path/to/site.yaml or ask your admin for the site name")


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hpcdesk" / "config.yaml"


def load(site: str | None = None, overrides: Mapping[str, Any] | None = None,
         override_source: str = "command line", user_file: bool = True) -> LoadedConfig:
    """Merge all layers; `overrides` maps dotted keys to already-parsed CLI values.

    user_file=False leaves the user's ~/.config/hpcdesk/config.yaml out: the Open OnDemand
    form is limited by the site file alone, nothing the user controls may widen it.
    """
    given = dict(overrides or {})
    return _cached(site, user_file, ["overrides", override_source, repr(sorted(given.items()))],
                   lambda site_path: _merge(site_path, given, override_source, user_file))


def load_with_sets(site: str | None, sets: Sequence[str],
                   parse: Callable[[], Mapping[str, Any]], user_file: bool = True) -> LoadedConfig:
    """`load` for a command line's `--set KEY=VALUE` strings: the cache is keyed by the strings
    as typed, so a hit parses nothing; `parse` turns them into overrides on a miss."""
    return _cached(site, user_file, ["sets", list(sets)],
                   lambda site_path: _merge(site_path, parse(), "command line", user_file))


def _code_identity() -> list[Any]:
    """hpcdesk's loader, schema and checks as installed: a reinstall or an edit (same version
    number) is a miss."""
    here = os.path.dirname(os.path.abspath(__file__))
    found: list[Any] = []
    for d in (here, os.path.join(here, "connect")):
        with contextlib.suppress(OSError), os.scandir(d) as entries:
            for e in entries:
                if e.name.endswith(".py"):
                    st = e.stat()
                    found.append([d, e.name, st.st_ino, st.st_size, st.st_mtime_ns])
    return sorted(found)


def _cached(site: str | None, user_file: bool, extra: list[Any],
            merge: Callable[[Path | None], LoadedConfig]) -> LoadedConfig:
    site_path = find_site(site)
    upath = str(user_config_path()) if user_file else None
    key = [__version__, _code_identity(), site_path and user_cache.identity(str(site_path)),
           upath and (user_cache.identity(upath) or [upath]), extra]
    hit = user_cache.get(CACHE_FILE, key)
    if isinstance(hit, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return LoadedConfig(None, dict(hit["sources"]), site_path, dict(hit["values"]))
    loaded = merge(site_path)
    user_cache.put(CACHE_FILE, key, {"values": loaded.flat(), "sources": loaded.sources})
    return loaded


def _merge(site_path: Path | None, overrides: Mapping[str, Any], override_source: str,
           user_file: bool) -> LoadedConfig:
    import dataclasses

    from hpcdesk.schema import SiteConfig

    flat: dict[str, Any] = {}
    sources: dict[str, str] = {}
    defaults = dict(_flatten(dataclasses.asdict(SiteConfig())))
    for k, v in defaults.items():
        flat[k], sources[k] = v, DEFAULT_SOURCE
    upath = user_config_path() if user_file else None
    files = [(f"site file {site_path}", site_path)] if site_path else []
    if upath is not None and upath.is_file():
        files.append((f"user file {upath}", upath))
    for source, path in files:
        for k, v in _validated(source, path).items():
            flat[k], sources[k] = v, source
    for k, v in overrides.items():
        try:
            tp, meta = field_meta(k)
        except (KeyError, TypeError):
            raise ConfigError(f"{override_source}: {k}: unknown key") from None
        if meta.get("admin"):
            raise ConfigError(f"{override_source}: {k}: only the site file may set this")
        try:
            flat[k] = _coerce(v, tp, meta)
        except ValueError as exc:
            raise ConfigError(f"{override_source}: {k}: {exc}") from None
        sources[k] = override_source
    cfg: SiteConfig = _build(SiteConfig, flat)
    cfg.desktop.auth = resolved_auth(cfg.desktop.auth, cfg)
    _cross_checks(cfg, sources)
    return LoadedConfig(cfg, sources, site_path)


Auth = Literal["auto", "basic", "token"]


def token_capable(cfg: SiteConfig) -> bool:
    """Whether the desktop's Selkies has token mode (Selkies 2.x): the host runtime, or one of
    hpcdesk's images serving the Selkies interface (not the upstream images' 1.6)."""
    if cfg.runtime.kind == "host":
        return True
    from hpcdesk.images import is_upstream

    return not is_upstream(cfg.runtime.image or "") and cfg.desktop.interface == "selkies"


def resolved_auth(auth: Auth, cfg: SiteConfig) -> Auth:
    """desktop.auth as the desktop gets it: auto means token wherever the runtime can (a link
    with the token in its fragment works as printed in every browser and for every transport;
    a URL with a user and password does not: Chromium then refuses the page's own fetch()
    calls, and a WebRTC desktop never gets its ICE servers), basic elsewhere."""
    if auth != "auto":
        return auth
    return "token" if token_capable(cfg) else "basic"


def _validated(source: str, path: Path) -> dict[str, Any]:
    layer = validate_layer(_read_yaml(path), str(path))
    if not source.startswith("site"):
        for k in layer:
            if field_meta(k)[1].get("admin"):
                raise ConfigError(f"{path}: {k}: only the site file may set this")
    return layer


def cache_path() -> Path:
    return Path(user_cache.cache_dir()) / CACHE_FILE


def _cross_checks(cfg: SiteConfig, sources: Mapping[str, str]) -> None:
    from hpcdesk.schema import TurnConfig, slurm_time_seconds

    def fail(key: str, msg: str, *related: str) -> None:
        # Name the layer that actually set one of the keys involved, not a built-in default.
        source = next((sources[k] for k in (key, *related) if sources[k] != DEFAULT_SOURCE),
                      sources[key])
        raise ConfigError(f"{source}: {key}: {msg}")

    limit = slurm_time_seconds(cfg.scheduler.time)
    if cfg.scheduler.signal_lead * 2 > limit:
        fail("scheduler.signal_lead",
             f"{cfg.scheduler.signal_lead}s is more than half the time limit {cfg.scheduler.time}",
             "scheduler.time")
    if cfg.network.address == "interface" and not cfg.network.interface:
        fail("network.interface", "must be set when network.address is 'interface'",
             "network.address")
    if cfg.network.address == "fixed" and not cfg.network.fixed_address:
        fail("network.fixed_address", "must be set when network.address is 'fixed'",
             "network.address")
    n = cfg.network
    if (n.port_min or n.port_max) and not 1024 <= n.port_min < n.port_max:
        fail("network.port_max", "port range must satisfy 1024 <= port_min < port_max",
             "network.port_min")
    if bool(cfg.desktop.https_cert) != bool(cfg.desktop.https_key):
        fail("desktop.https_key", "https_cert and https_key go together", "desktop.https_cert")
    if cfg.runtime.kind == "apptainer" and not cfg.runtime.image:
        fail("runtime.image", "must name an image (a .sif path or a flavour) for apptainer",
             "runtime.kind")
    if cfg.desktop.auth == "token" and not token_capable(cfg):
        fail("desktop.auth", "token mode needs Selkies 2.x: the host runtime or one of "
             "hpcdesk's images (debian, kde) with desktop.interface: selkies",
             "runtime.kind", "runtime.image", "desktop.interface")
    if cfg.timeouts.poll_max < cfg.timeouts.poll_min:
        fail("timeouts.poll_max", "must not be below timeouts.poll_min", "timeouts.poll_min")
    if (cfg.turn != TurnConfig() or cfg.desktop.transport != "websockets"
            or cfg.network.connect != "direct"):
        from hpcdesk.connect import rtc, turn  # only for sites that use WebRTC or TURN

        for key, msg in turn.config_problems(cfg.turn) + rtc.config_problems(cfg):
            fail(key, msg, *turn.AUTH_KEYS, "turn.host", "desktop.transport", "network.connect",
                 "network.turn", "turn.ice_transport_policy")
    if cfg.network.turn_relay_max - cfg.network.turn_relay_min < 15:
        fail("network.turn_relay_max", "the in-job TURN's relay range needs at least 16 ports",
             "network.turn_relay_min")


def parse_cli_value(text: str, key: str | None = None) -> Any:
    """A --set value: for a text key exactly what was typed (2:00:00 is a Slurm time, 0123 an
    account); otherwise a YAML scalar/list ('8', 'true', '[a, b]'), else the literal string."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        tp = field_meta(key)[0] if key else None
        if get_origin(tp) in (Union, types.UnionType):
            if text.strip() in ("null", "~"):
                return None
            (tp,) = [a for a in get_args(tp) if a is not type(None)]
        if tp is str:
            return text
    try:
        return _yaml_load(text) if text.strip() else text
    except _yaml().YAMLError:
        return text


def parse_resolution(text: str) -> tuple[int, int]:
    """--resolution WIDTHxHEIGHT (schema.parse_resolution, the one parser of the form)."""
    try:
        from hpcdesk.schema import parse_resolution as parse

        return parse(text)
    except ValueError as exc:
        raise ConfigError(f"command line: --resolution: {exc}") from None


def render_show(loaded: LoadedConfig) -> str:
    lines = []
    flat = loaded.flat()
    width = max(len(k) for k in flat) + 2
    for key, value in flat.items():
        shown = _yaml().safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
        shown = shown.removesuffix("...").strip()
        lines.append(f"{key:<{width}}{shown:<24} # {loaded.sources[key]}")
    return "\n".join(lines)


def render_reference() -> str:
    """The configuration reference (Markdown), generated from the schema."""
    import dataclasses

    from hpcdesk.schema import SiteConfig

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, default in _flatten(dataclasses.asdict(SiteConfig())):
        tp, meta = field_meta(key)
        limits = ""
        if meta.get("min") is not None:
            limits = f" ({meta['min']}..{meta['max']})"
        text = meta.get("help", "")
        out.append(f"| `{key}` | {_type_name(tp)}{limits} | `{default!r}` | {text} |")
    return "\n".join(out)
