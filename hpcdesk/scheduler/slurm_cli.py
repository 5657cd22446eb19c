"""The default backend: Slurm's own commands, called with argument lists (never a shell).

Queries use explicit output formats and a scrubbed environment, so a user's SQUEUE_FORMAT,
SLURM_TIME_FORMAT or SBATCH_* settings cannot change what is submitted or how it is parsed.
One `squeue` call per cluster answers for every watched job; jobs that already left the
controller are looked up with one `sacct` call. With a cache directory, that answer (all of
the user's jobs) is shared for `cache_age` seconds by every hpcdesk process of the user, so
several waiting clients polling at the same instant cost one RPC.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hpcdesk.errors import SchedulerError, SchedulerRejected
from hpcdesk.scheduler import JobInfo, JobRef, JobState, map_slurm_state
from hpcdesk.session import atomic_write

_SCRUB_PREFIXES = ("SQUEUE_", "SACCT_", "SBATCH_", "SCANCEL_", "SLURM_TIME_FORMAT")
_SEP = "|"
_SQUEUE_FORMAT = _SEP.join(["%i", "%T", "%r", "%S", "%N"])
_SACCT_FIELDS = "JobIDRaw,State,ExitCode,NodeList"

# Slurm messages that mean "your request is wrong", as opposed to "Slurm is unreachable".
# (Patterns, compiled only when a command failed: compiling them costs a cold start ~10 ms.)
_USER_ERRORS = (
    r"invalid partition|invalid account|invalid qos|node configuration is not available|"
    r"invalid generic resource|invalid feature|time limit is invalid|invalid trackable|"
    r"reservation is invalid|more processors requested|memory required by task|"
    r"violates accounting|invalid (?:job )?constraint|invalid cluster|no such cluster|"
    r"unrecognized option|invalid option|invalid gres|access denied|user's group not permitted"
)
_UNREACHABLE = (
    r"unable to contact slurm controller|socket timed out|connection refused|"
    r"slurm_load_jobs error: (?:unable|socket|communication)|transient|try again"
)


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def slurm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}


def _cluster_args(cluster: str | None) -> list[str]:
    return ["-M", cluster] if cluster else []


class SlurmCli:
    name = "slurm-cli"

    def __init__(self, timeout: float = 30.0, cache_dir: Path | None = None,
                 cache_age: float = 1.0) -> None:
        self.timeout = timeout
        self.cache_dir = cache_dir
        self.cache_age = cache_age
        self.calls: dict[str, int] = defaultdict(int)  # for benchmarks and tests
        self.last_error = ""

    def _run(self, argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        self.calls[argv[0]] += 1
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=slurm_env(),
                                  timeout=self.timeout, cwd=cwd, check=False)
        except FileNotFoundError:
            raise SchedulerError(f"{argv[0]}: command not found",
                                 hint="run hpcdesk where the Slurm commands are installed "
                                 "(a login node), or load the Slurm module") from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out")

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        proc = self._run(["sbatch", "--parsable", *_cluster_args(cluster), str(script)],
                         cwd=script.parent)
        if proc.returncode != 0:
            msg = " ".join(line.strip() for line in proc.stderr.strip().splitlines()) or (
                f"sbatch exited with {proc.returncode}")
            if _matches(_USER_ERRORS, msg):
                raise SchedulerRejected(f"Slurm refused the job: {msg}",
                                        hint="check the partition/account/qos/gres with "
                                        "`sinfo` and `sacctmgr show assoc user=$USER`")
            raise SchedulerError(f"sbatch failed: {msg}")
        first = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        job_id, _, job_cluster = first.partition(";")
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
        return JobRef(job_id, job_cluster or cluster)

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        by_cluster: dict[str | None, list[JobRef]] = defaultdict(list)
        for job in jobs:
            by_cluster[job.cluster].append(job)
        result: dict[JobRef, JobInfo] = {}
        for cluster, refs in by_cluster.items():
            result.update(self._query_cluster(cluster, refs))
        return result

    def _query_cluster(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
        wanted = {r.job_id: r for r in refs}
        output = self._cached_squeue(cluster, set(wanted))
        if output is None:
            why = f"squeue failed: {self.last_error}" if self.last_error else "squeue failed"
            return {r: JobInfo(r, JobState.UNKNOWN, reason=why) for r in refs}
        found: dict[JobRef, JobInfo] = {}
        for line in output.splitlines():
            parts = line.strip().split(_SEP)
            if len(parts) != 5 or parts[0] not in wanted:
                continue  # "CLUSTER: name" headers of -M output, other jobs
            job_id, state, reason, start, nodes = parts
            ref = wanted[job_id]
            found[ref] = JobInfo(ref, map_slurm_state(state), reason=_clean(reason),
                                 start_estimate=_clean(start), nodes=_clean(nodes),
                                 raw_state=state)
        missing = [r for r in refs if r not in found]
        if missing:
            found.update(self._sacct(cluster, missing))
        return found

    def _cached_squeue(self, cluster: str | None, wanted: set[str]) -> str | None:
        """All of the user's jobs (squeue output), from a fresh shared cache or one RPC."""
        if self.cache_dir is None:
            return self._squeue(cluster)
        cache = self.cache_dir / f"squeue-{cluster or 'default'}.txt"
        fresh = self._read_cache(cache, wanted)
        if fresh is not None:
            return fresh
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(cache.with_suffix(".lock"), os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError:
            return self._squeue(cluster)  # no shared snapshot here: ask Slurm directly
        try:
            # Clients that poll at the same instant queue here; the first one asks Slurm,
            # the others find its fresh snapshot when they get the lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            fresh = self._read_cache(cache, wanted)
            if fresh is not None:
                return fresh
            output = self._squeue(cluster)
            if output is not None:
                atomic_write(cache, output, mode=0o600)
            return output
        finally:
            os.close(lock)

    def _read_cache(self, cache: Path, wanted: set[str]) -> str | None:
        try:
            if time.time() - cache.stat().st_mtime > self.cache_age:
                return None
            text = cache.read_text()
        except OSError:
            return None
        listed = {line.split(_SEP, 1)[0].strip() for line in text.splitlines()}
        return text if wanted <= listed else None  # a newer job is not in an older snapshot

    def _squeue(self, cluster: str | None) -> str | None:
        # One RPC for all of the user's jobs; the job list is filtered by the caller, which
        # also avoids squeue's error for a single job id that already left the controller.
        proc = self._run(["squeue", "--noheader", "--states=all", f"--user={getpass.getuser()}",
                          f"--format={_SQUEUE_FORMAT}", *_cluster_args(cluster)])
        if proc.returncode != 0:
            self.last_error = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            return None
        self.last_error = ""
        return proc.stdout

    def _sacct(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
        proc = self._run(["sacct", "--noheader", "--parsable2", "--allocations",
                          f"--format={_SACCT_FIELDS}",
                          "--jobs=" + ",".join(r.job_id for r in refs), *_cluster_args(cluster)])
        out: dict[JobRef, JobInfo] = {}
        if proc.returncode == 0:
            wanted = {r.job_id: r for r in refs}
            for line in proc.stdout.splitlines():
                parts = line.split("|")
                if len(parts) == 4 and parts[0] in wanted:
                    ref = wanted[parts[0]]
                    out[ref] = JobInfo(ref, map_slurm_state(parts[1]), exit_code=parts[2],
                                       nodes=_clean(parts[3]), raw_state=parts[1])
        elif _matches(_UNREACHABLE, proc.stderr):
            return {r: JobInfo(r, JobState.UNKNOWN, reason="accounting not reachable")
                    for r in refs}
        # Not in squeue and not in accounting (or accounting disabled): it has ended.
        for r in refs:
            out.setdefault(r, JobInfo(r, JobState.ENDED, reason="no longer known to Slurm"))
        return out

    def exit_code(self, job: JobRef) -> str:
        """The job's exit code while the controller still remembers it ('' if unknown)."""
        proc = self._run(["scontrol", "--oneliner", "show", "job", job.job_id,
                          *_cluster_args(job.cluster)])
        m = re.search(r"\bExitCode=(\S+)", proc.stdout)
        return m.group(1) if m else ""

    def cancel(self, job: JobRef) -> None:
        proc = self._run(["scancel", *_cluster_args(job.cluster), job.job_id])
        if proc.returncode != 0:
            msg = proc.stderr.strip()
            if re.search(r"already completing or completed|invalid job id", msg, re.IGNORECASE):
                return
            raise SchedulerError(f"scancel {job} failed: {msg}")


def _clean(value: str) -> str:
    value = value.strip()
    return "" if value in ("N/A", "(null)", "None", "n/a") else value
