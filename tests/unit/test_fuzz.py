"""Fuzz (hypothesis): generated site files and command-line values are either a valid
configuration or one clear error (an HpcdeskError, never another exception), and no value
ever runs as a command: every valid configuration's job script is rendered and RUN by bash,
and the shell payloads hidden in the values must not have touched their marker file.

The job script's `runtime.setup` lines are the site's own shell commands by design (site file
only), and its agent command is replaced by `true`: everything else runs as rendered.
"""

from __future__ import annotations

import os
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpcdesk import config
from hpcdesk.commands.common import overrides_from_sets
from hpcdesk.config import LoadedConfig
from hpcdesk.errors import HpcdeskError
from hpcdesk.login import jobscript
from hpcdesk.schema import SiteConfig

MARK = Path(f"/tmp/hpcdesk-fuzz-{os.getpid()}-ran")
PAYLOADS = [f"$(touch {MARK})", f"`touch {MARK}`", f";touch {MARK}", f"&& touch {MARK}",
            f"|touch {MARK}", f"\ntouch {MARK}\n", f"'; touch {MARK}; '", f'"; touch {MARK}; "',
            f"${{IFS}}touch${{IFS}}{MARK}", f"\\\ntouch {MARK}"]


def _keys() -> list[str]:
    import dataclasses

    out = []
    for name, value in dataclasses.asdict(SiteConfig()).items():
        out += [f"{name}.{k}" for k in value] if isinstance(value, dict) else [name]
    return out


KEYS = _keys()
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(PAYLOADS),
    st.builds(lambda a, p, b: a + p + b, st.text(alphabet=string.ascii_letters + "0123456789:-_.",
                                                  max_size=10),
              st.sampled_from(PAYLOADS), st.text(max_size=5)),
)
payloaded = st.builds(lambda a, p, b: a + p + b, st.text(alphabet=string.ascii_letters, max_size=6),
                      st.sampled_from(PAYLOADS), st.text(alphabet=string.ascii_letters,
                                                          max_size=6))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("fuzz")
    old = {k: os.environ.get(k) for k in ("HOME", "XDG_CONFIG_HOME", "HPCDESK_SITE")}
    os.environ.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"))
    os.environ.pop("HPCDESK_SITE", None)
    (home / "sess").mkdir()
    (home / "site.yaml").write_text("name: fuzz\n")
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    MARK.unlink(missing_ok=True)


def _outcome(load: object) -> LoadedConfig | None:
    """The loaded config, or None after one clear error; anything else fails the test."""
    try:
        loaded = load()  # type: ignore[operator]
    except HpcdeskError as exc:
        text = str(exc)
        assert text and "Traceback" not in text
        event("one clear error")
        return None
    assert isinstance(loaded, LoadedConfig)
    event("valid")
    return loaded


def _run_job_script(loaded: LoadedConfig, home: Path) -> None:
    cfg = loaded.config
    cfg.runtime.setup = []            # the site's own commands, by design (see the docstring)
    cfg.runtime.agent_command = "true"
    # The session directory keeps the session root's characters literally (test_desktop.py
    # submits one such path for real); kept inside the sandbox.
    sdir = home / "sess" / cfg.session_root.replace("/", "_")[:120] / "abcdef"
    try:
        sdir.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError):
        sdir = home / "sess"
    try:
        script = jobscript.render(cfg, "abcdef", sdir)
    except HpcdeskError:
        return  # refused while rendering: one clear error too
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20,
                          cwd=home, check=False)
    assert proc.returncode == 0, (script, proc.stderr)
    assert not MARK.exists(), f"a value ran as a command:\n{script}"
    event("job script ran" + (" (with a payload)" if "touch" in script else ""))


FUZZ = settings(max_examples=1100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# Keys whose values reach the job script (its #SBATCH lines and its `cd`), drawn more often.
SCRIPT_KEYS = ["session_root", "scheduler.partition", "scheduler.account", "scheduler.qos",
               "scheduler.time", "scheduler.memory", "scheduler.gres", "scheduler.constraint",
               "scheduler.reservation", "scheduler.job_name", "scheduler.extra_args"]
extra_args = st.lists(st.builds(lambda n, v: f"--{n}={v}", st.text(
    alphabet=string.ascii_lowercase + "-", min_size=1, max_size=8), texts), max_size=3).map(
    lambda xs: "[" + ", ".join(repr(x) for x in xs) + "]")


@pytest.mark.reliability("S11 fuzzed config files and CLI values (2,200)",
                          "valid or one clear error; no value ever runs")
@FUZZ
@given(pairs=st.lists(st.one_of(
    st.tuples(st.one_of(st.sampled_from(KEYS), texts), texts),
    st.tuples(st.sampled_from(SCRIPT_KEYS), texts),
    st.tuples(st.sampled_from(SCRIPT_KEYS), payloaded),
    st.tuples(st.just("scheduler.extra_args"), extra_args)), min_size=1, max_size=2))
def test_fuzzed_command_line_values(sandbox: Path, pairs: list[tuple[str, str]]) -> None:
    sets = [f"{k}={v}" for k, v in pairs]
    loaded = _outcome(lambda: config.load(str(sandbox / "site.yaml"), overrides_from_sets(sets)))
    if loaded is not None:
        _run_job_script(loaded, sandbox)


@pytest.mark.reliability("S11 fuzzed config files and CLI values (2,200)",
                          "valid or one clear error; no value ever runs")
@FUZZ
@given(doc=st.one_of(
    st.dictionaries(st.sampled_from([k.split(".")[0] for k in KEYS]) | texts,
                    st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]) | texts,
                                    values, max_size=4) | values, max_size=4),
    st.text(max_size=200)))
def test_fuzzed_site_files(sandbox: Path, doc: object) -> None:
    site = sandbox / "fuzzed.yaml"
    site.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    loaded = _outcome(lambda: config.load(str(site)))
    if loaded is not None:
        _run_job_script(loaded, sandbox)
