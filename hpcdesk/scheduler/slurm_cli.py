"""The default backend: Slurm's own commands, called with argument lists (never a shell).

Queries use explicit output formats and a scrubbed environment, so a user's SQUEUE_FORMAT,
SLURM_TIME_FORMAT or SBATCH_* settings cannot change what is submitted or how it is parsed.
One `squeue` call per cluster answers for every watched job; jobs that already left the
controller are looked up with one `sacct` call (the shared parts: queue_table.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpcdesk.errors import SchedulerError, SchedulerRejected
from hpcdesk.scheduler import JobInfo, JobRef, JobState, Partition, map_slurm_state, spawn
from hpcdesk.scheduler.queue_table import (
    ALREADY_DONE,
    REJECTED_HINT,
    SEP,
    UNREACHABLE,
    USER_ERRORS,
    QueueTable,
    clean,
    ended,
    matches,
)

_SCRUB_PREFIXES = ("SQUEUE_", "SACCT_", "SBATCH_", "SCANCEL_", "SLURM_TIME_FORMAT")
_SQUEUE_FORMAT = SEP.join(["%i", "%T", "%r", "%S", "%N"])
_SACCT_FIELDS = "JobIDRaw,State,ExitCode,NodeList"


def slurm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}


def _cluster_args(cluster: str | None) -> list[str]:
    return ["-M", cluster] if cluster else []


class SlurmCli(QueueTable):
    name = "slurm-cli"

    def __init__(self, timeout: float = 30.0, cache_dir: Path | None = None,
                 cache_age: float = 1.0) -> None:
        super().__init__(cache_dir=cache_dir, cache_age=cache_age)
        self.timeout = timeout

    def _run(self, argv: list[str]) -> spawn.Ran:
        """The command's exit code (124: it did not answer in time) and output."""
        self.calls[argv[0]] += 1
        try:
            return spawn.run(argv, slurm_env(), self.timeout)
        except FileNotFoundError:
            raise SchedulerError(f"{argv[0]}: command not found",
                                 hint="run hpcdesk where the Slurm commands are installed "
                                 "(a login node), or load the Slurm module") from None

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        # The job runs in the session directory (its #SBATCH --output is relative), as the
        # pyslurm backend's working_directory says too.
        proc = self._run(["sbatch", "--parsable", f"--chdir={script.parent}",
                          *_cluster_args(cluster), str(script)])
        if proc.returncode == 124:  # the job may be queued all the same: look before deciding
            return self.recover_submit(script, cluster, f"sbatch did not answer within "
                                       f"{self.timeout:.0f}s")
        if proc.returncode != 0:
            msg = " ".join(line.strip() for line in proc.stderr.strip().splitlines()) or (
                f"sbatch exited with {proc.returncode}")
            if matches(USER_ERRORS, msg):
                raise SchedulerRejected(f"Slurm refused the job: {msg}", hint=REJECTED_HINT)
            raise SchedulerError(f"sbatch failed: {msg}")
        first = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        job_id, _, job_cluster = first.partition(";")
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
        return JobRef(job_id, job_cluster or cluster)

    def fetch_table(self, cluster: str | None) -> str | None:
        # One RPC for all of the user's jobs; the job list is filtered by the caller, which
        # also avoids squeue's error for a single job id that already left the controller.
        # The user is this process's uid, not $USER or $LOGNAME (which can name anyone).
        proc = self._run(["squeue", "--noheader", "--states=all", f"--user={os.getuid()}",
                          f"--format={_SQUEUE_FORMAT}", *_cluster_args(cluster)])
        if proc.returncode != 0:
            self.last_error = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            return None
        self.last_error = ""
        return proc.stdout

    def fetch_tags(self, cluster: str | None) -> dict[str, str] | None:
        proc = self._run(["squeue", "--noheader", f"--user={os.getuid()}",
                          f"--format=%i{SEP}%k", *_cluster_args(cluster)])
        if proc.returncode != 0:
            self.last_error = " ".join(proc.stderr.split()) or f"exit code {proc.returncode}"
            return None
        pairs = (line.strip().split(SEP, 1) for line in proc.stdout.splitlines())
        return {p[1]: p[0] for p in pairs if len(p) == 2 and p[0].isdigit()}

    def gone(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
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
                                       nodes=clean(parts[3]), raw_state=parts[1])
        elif matches(UNREACHABLE, proc.stderr):
            return {r: JobInfo(r, JobState.UNKNOWN, reason="accounting not reachable")
                    for r in refs}
        return {**ended([r for r in refs if r not in out]), **out}

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
            if matches(ALREADY_DONE, msg):
                return
            raise SchedulerError(f"scancel {job} failed: {msg}")

    def partitions(self, cluster: str | None) -> dict[str, Partition] | None:
        """All partitions from one `scontrol show partition`."""
        try:
            proc = self._run(["scontrol", "--oneliner", *_cluster_args(cluster), "show",
                              "partition"])
        except SchedulerError:
            return None  # unknown here: sbatch gives its own clear answer
        return parse_partitions(proc.stdout) if proc.returncode == 0 else None

    def down_nodes(self, cluster: str | None) -> set[str]:
        """Nodes that are down, drained or failing (one `sinfo`)."""
        try:
            proc = self._run(["sinfo", "--noheader", "--Node",
                              "--states=down,drain,fail,no_respond", "--format=%N",
                              *_cluster_args(cluster)])
        except SchedulerError:
            return set()
        return {n.strip() for n in proc.stdout.split()} if proc.returncode == 0 else set()


def parse_partitions(text: str) -> dict[str, Partition]:
    """`scontrol --oneliner show partition` output, by name."""
    from hpcdesk.schema import slurm_time_seconds  # here: only `submit` reads the limits

    out: dict[str, Partition] = {}
    for line in text.splitlines():
        fields: dict[str, str] = {m[1]: m[2] for m in re.finditer(r"(\w+)=(\S*)", line)}
        name = fields.get("PartitionName")
        if not name:
            continue
        max_time = fields.get("MaxTime", "UNLIMITED")
        try:
            seconds: int | None = slurm_time_seconds(max_time)
        except ValueError:
            seconds = None  # UNLIMITED / INFINITE
        out[name] = Partition(name, fields.get("State", "UP"), max_time, seconds,
                              fields.get("Default") == "YES")
    return out
