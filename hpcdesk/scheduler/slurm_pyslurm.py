"""The optional backend: Slurm's C API through pyslurm, no process per call, no output parsing.

The contract is the commands backend's (queue_table.py holds what both share): the job is the
same rendered script with the same `#SBATCH` options, one call answers for all of the
user's jobs, jobs that left the controller are looked up in accounting, and Slurm's errors
map to the same exit codes.

The queue is read with `slurm_load_job_user` (REQUEST_JOB_USER_INFO: the controller sends this
user's jobs only, as for `squeue -u USER`), not `Jobs.load`, which fetches every job on the
cluster: on a busy site that costs the controller, the network and this process in proportion
to other people's work. pyslurm 22.5.3 reaches that call only through its older `job` class
(`job().find_user(uid)`, records as dicts); its newer `Jobs` has no user filter.

pyslurm must be built for the Slurm release it talks to: `probe()` tells whether it imports
(libslurm's ABI) and was built for the Slurm release this host runs, for `backend: auto` and
`hpcdesk doctor`.

pyslurm 22.5.3 never applies a submit description's `signal` (its `_set_signal` is not
called); `_description_class` adds the call, so the early time-limit warning is sent as with
`sbatch --signal`.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from hpcdesk.errors import SchedulerError, SchedulerRejected
from hpcdesk.scheduler import JobInfo, JobRef, JobState, Partition, map_slurm_state
from hpcdesk.scheduler.queue_table import (
    ALREADY_DONE,
    REJECTED_HINT,
    TIMED_OUT,
    UNREACHABLE,
    USER_ERRORS,
    QueueTable,
    ended,
    matches,
    row,
)
from hpcdesk.scheduler.slurm_cli import slurm_env

_DIRECTIVE = re.compile(r"^#SBATCH\s+--([a-z][a-z0-9-]*)(?:=(.*))?$")
NO_MULTI_CLUSTER = ("the pyslurm backend talks to this host's cluster only; for sbatch -M use "
                    "scheduler.backend: slurm-cli (or auto)")


@dataclass(frozen=True)
class Probe:
    """Whether pyslurm can serve here, and why (shown by `hpcdesk doctor`)."""

    usable: bool
    reason: str
    module: ModuleType | None = None


def probe() -> Probe:
    """Import pyslurm (which loads this host's libslurm) and check that the Slurm release it
    was built for is the one this host runs (`sinfo -V`: its commands and libslurm)."""
    try:
        import pyslurm
    except ImportError as exc:
        return Probe(False, f"pyslurm is not installed or cannot load libslurm ({exc}); "
                     "install hpcdesk[pyslurm] built for this Slurm (docs/admin.md, "
                     "Scheduler backends)")
    release = tuple(int(x) for x in str(pyslurm.__version__).split(".")[:2])
    built_for = tuple(pyslurm.slurm_api_version())
    running = _running_slurm()
    if running is None:
        return Probe(False, "cannot tell which Slurm this host runs (`sinfo -V` failed)")
    if release != built_for[:2] or built_for[:2] != running[:2]:
        return Probe(False, f"pyslurm {pyslurm.__version__} is built for Slurm "
                     f"{_release(built_for)}, but this host runs Slurm {_release(running)}: "
                     "build the pyslurm release that matches it (docs/admin.md, Scheduler "
                     "backends)")
    return Probe(True, f"pyslurm {pyslurm.__version__} matches Slurm {_release(running)}",
                 pyslurm)


RELEASE_CACHE = "slurm-release.json"  # in user_cache.cache_dir()


def _running_slurm() -> tuple[int, ...] | None:
    """The Slurm release this host runs (`sinfo -V`), asked once per installation: the answer
    is cached under the identity of the `sinfo` that gave it and of the libslurm this process
    loaded (an upgrade of either is a miss), not asked again on every command."""
    import shutil

    from hpcdesk import user_cache

    env = slurm_env()
    sinfo = shutil.which("sinfo", path=env.get("PATH"))
    key = ["sinfo -V", sinfo and user_cache.identity(sinfo),
           [user_cache.identity(lib) for lib in _loaded_libslurm()]]
    if sinfo:
        hit = user_cache.get(RELEASE_CACHE, key)
        if isinstance(hit, list) and hit and all(isinstance(x, int) for x in hit):
            return tuple(hit)
    try:
        out = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, timeout=10,
                             env=env, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        return None
    running = tuple(int(x) for x in m.groups())
    if sinfo:
        user_cache.put(RELEASE_CACHE, key, list(running))
    return running


def _loaded_libslurm() -> list[str]:
    """The libslurm files this process has mapped (pyslurm's), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as fh:
            found = {line.split(None, 5)[-1].strip() for line in fh if "libslurm" in line}
    except OSError:
        return []
    return sorted(p for p in found if p.startswith("/"))


def _release(version: tuple[int, ...]) -> str:
    return f"{version[0]}.{version[1]:02d}" + "".join(f".{v}" for v in version[2:3])


def _description_class(pyslurm: ModuleType) -> type[Any]:
    class Description(pyslurm.JobSubmitDescription):  # type: ignore[misc,name-defined]
        def _create_job_submit_desc(self, is_update: bool = False) -> None:
            super()._create_job_submit_desc(is_update)
            self._set_signal()

    return Description


# `#SBATCH --name[=value]` -> JobSubmitDescription attribute and value converter. These are
# the options hpcdesk's job script can carry (jobscript.sbatch_lines and the validated
# scheduler.extra_args); anything else is refused with the way out.
def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _time(value: str) -> int | str:
    """Minutes as an int: pyslurm passes a digit-only string through to the C field."""
    return int(value) if value.isdigit() else value


def _signal(value: str) -> dict[str, Any]:
    """sbatch's --signal=[{R|B}:]SIG[@TIME] as pyslurm's dict (it knows signals as SIGxxx)."""
    flags, _, rest = value.rpartition(":")
    name, _, when = rest.partition("@")
    name, flags = name.upper(), flags.upper()
    sig: int | str = int(name) if name.isdigit() else (
        name if name.startswith("SIG") else f"SIG{name}")
    return {"signal": sig, "time": int(when or 60), "batch_only": "B" in flags,
            "allow_reservation_overlap": "R" in flags}


_OPTIONS: dict[str, tuple[str, Any]] = {
    "job-name": ("name", str), "output": ("standard_output", str), "nodes": ("nodes", str),
    "ntasks": ("ntasks", int), "cpus-per-task": ("cpus_per_task", int),
    "mem": ("memory_per_node", str), "time": ("time_limit", _time), "signal": ("signal", _signal),
    "partition": ("partitions", _split), "account": ("account", str), "qos": ("qos", str),
    "gres": ("gres_per_node", str), "constraint": ("constraints", str),
    "reservation": ("reservations", _split), "nodelist": ("required_nodes", _split),
    "exclude": ("excluded_nodes", _split), "comment": ("comment", str),
    "exclusive": ("resource_sharing", lambda _v: "no"),
}
_FLAGS: dict[str, tuple[str, Any]] = {"hold": ("priority", 0),
                                       "no-requeue": ("is_requeueable", False)}


def description_fields(script: Path) -> dict[str, Any]:
    """The submit description's fields from the job script's own `#SBATCH` lines."""
    fields: dict[str, Any] = {"script": str(script), "working_directory": str(script.parent),
                              "environment": slurm_env()}
    for line in script.read_text().splitlines():
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.startswith("#"):
                break  # sbatch stops reading options at the first command
            continue
        m = _DIRECTIVE.match(line.strip())
        name, value = (m[1], m[2]) if m else (line, None)
        if value is None and name in _FLAGS:
            attr, flag_value = _FLAGS[name]
            fields[attr] = flag_value
        elif value is not None and name in _OPTIONS:
            attr, convert = _OPTIONS[name]
            fields[attr] = convert(value)
        else:
            raise SchedulerRejected(f"the pyslurm backend cannot pass {line.strip()!r}",
                                    hint="drop it from scheduler.extra_args, or use "
                                    "scheduler.backend: slurm-cli")
    out = fields.get("standard_output")
    if out and not os.path.isabs(out):
        fields["standard_output"] = str(script.parent / out)  # sbatch: relative to the cwd
    return fields


class Pyslurm(QueueTable):
    name = "pyslurm"
    table_source = "pyslurm job().find_user"

    def __init__(self, module: ModuleType, cache_dir: Path | None = None,
                 cache_age: float = 1.0) -> None:
        super().__init__(cache_dir=cache_dir, cache_age=cache_age)
        self.pyslurm = module
        self.uid = os.getuid()

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        if cluster:
            raise SchedulerRejected(NO_MULTI_CLUSTER)
        fields = description_fields(script)
        self.calls["submit"] += 1
        try:
            job_id = _description_class(self.pyslurm)(**fields).submit()
        except (ValueError, TypeError) as exc:
            raise SchedulerRejected(f"Slurm refused the job: {exc}", hint=REJECTED_HINT) from None
        except self.pyslurm.RPCError as exc:
            msg = _message(exc)
            if matches(USER_ERRORS, msg):
                raise SchedulerRejected(f"Slurm refused the job: {msg}",
                                        hint=REJECTED_HINT) from None
            if matches(TIMED_OUT, msg):  # the job may be queued all the same
                return self.recover_submit(script, None, f"submitting timed out ({msg})")
            raise SchedulerError(f"submitting through pyslurm failed: {msg}") from None
        return JobRef(str(job_id), None)

    def _own_jobs(self, cluster: str | None) -> list[dict[str, Any]] | None:
        """This user's jobs on the controller, asked for by user id: one REQUEST_JOB_USER_INFO
        whose answer holds no other user's job, after libslurm's small REQUEST_FED_INFO (it
        checks for a federation unless given SHOW_LOCAL, which this pyslurm class cannot
        pass). None: see last_error."""
        if cluster:
            self.last_error = NO_MULTI_CLUSTER
            return None
        self.calls["job.find_user"] += 1
        try:
            # A ValueError(message, errno) is how pyslurm's older API reports a failed RPC.
            jobs = self.pyslurm.job().find_user(self.uid)
        except (self.pyslurm.RPCError, ValueError) as exc:
            self.last_error = _message(exc)
            return None
        self.last_error = ""
        return [job for job in jobs.values() if job.get("user_id") == self.uid]

    def fetch_tags(self, cluster: str | None) -> dict[str, str] | None:
        jobs = self._own_jobs(cluster)
        if jobs is None:
            return None
        return {str(job["comment"]): str(job["job_id"]) for job in jobs if job.get("comment")}

    def fetch_table(self, cluster: str | None) -> str | None:
        jobs = self._own_jobs(cluster)
        if jobs is None:
            return None
        lines = []
        for job in jobs:
            lines.append(row(str(job["job_id"]), str(job.get("job_state") or ""),
                             _reason(str(job.get("state_reason") or "")),
                             _iso(job.get("start_time")), str(job.get("nodes") or "")))
        return "".join(line + "\n" for line in lines)

    def gone(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
        db = self.pyslurm.db
        self.calls["db.Jobs.load"] += 1
        try:
            found = db.Jobs.load(db.JobFilter(ids=[int(r.job_id) for r in refs],
                                              users=[getpass.getuser()]))
        except (self.pyslurm.RPCError, ValueError) as exc:
            if matches(UNREACHABLE, _message(exc)):
                return {r: JobInfo(r, JobState.UNKNOWN, reason="accounting not reachable")
                        for r in refs}
            return ended(refs)  # no accounting: as with sacct, the job has ended
        wanted = {r.job_id: r for r in refs}
        out: dict[JobRef, JobInfo] = {}
        for job in found.values():
            ref = wanted.get(str(job.id))
            if ref is not None:
                out[ref] = JobInfo(ref, map_slurm_state(str(job.state)),
                                   exit_code=f"{job.exit_code}:{job.exit_code_signal}",
                                   raw_state=str(job.state))
        return {**ended([r for r in refs if r not in out]), **out}

    def exit_code(self, job: JobRef) -> str:
        self.calls["Job.load"] += 1
        try:
            info = self.pyslurm.Job.load(int(job.job_id))
        except self.pyslurm.RPCError:
            return ""
        return f"{info.exit_code or 0}:{info.exit_code_signal or 0}"

    def cancel(self, job: JobRef) -> None:
        if job.cluster:
            raise SchedulerRejected(NO_MULTI_CLUSTER)
        self.calls["cancel"] += 1
        try:
            self.pyslurm.Job(int(job.job_id)).cancel()
        except self.pyslurm.RPCError as exc:
            msg = _message(exc)
            if matches(ALREADY_DONE, msg):
                return
            raise SchedulerError(f"cancelling {job} through pyslurm failed: {msg}") from None


    def partitions(self, cluster: str | None) -> dict[str, Partition] | None:
        """All partitions through the API (Partitions.load: one RPC, no command)."""
        self.calls["Partitions.load"] += 1
        try:
            loaded = self.pyslurm.Partitions.load()
        except self.pyslurm.RPCError:
            return None
        out: dict[str, Partition] = {}
        for name, part in loaded.items():
            minutes = part.max_time  # minutes, or pyslurm's UNLIMITED
            limited = isinstance(minutes, int)
            out[str(name)] = Partition(
                str(name), str(part.state or "UP").upper(),
                _slurm_minutes(minutes) if limited else "UNLIMITED",
                minutes * 60 if limited else None, bool(part.is_default))
        return out

    def down_nodes(self, cluster: str | None) -> set[str]:
        """Nodes whose state (e.g. "IDLE+DRAIN", "DOWN+NOT_RESPONDING") says they cannot run
        a job, through the API (Nodes.load)."""
        self.calls["Nodes.load"] += 1
        try:
            nodes = self.pyslurm.Nodes.load()
        except self.pyslurm.RPCError:
            return set()
        bad = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "NO_RESPOND")
        return {str(name) for name, node in nodes.items()
                if any(word in str(node.state or "").upper() for word in bad)}

def _message(exc: BaseException) -> str:
    msg = getattr(exc, "msg", "")
    if not msg and isinstance(exc, ValueError) and exc.args:
        msg = exc.args[0]  # pyslurm's older API: ValueError(message, errno)
    return str(msg or exc)


def _reason(text: str) -> str:
    """The pending reason as squeue shows it: pyslurm's older API writes a free-text reason
    ("ReqNodeNotAvail, UnavailableNodes:gpu01") with its spaces as underscores."""
    return text.replace(",_", ", ")


def _iso(epoch: int | None) -> str:
    """squeue's %S format (local time), '' when Slurm has no time."""
    if not epoch:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def _slurm_minutes(minutes: int) -> str:
    """Minutes as Slurm prints a time limit ("08:00:00", "1-00:00:00")."""
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text
