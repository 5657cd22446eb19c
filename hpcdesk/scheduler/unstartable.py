"""Jobs that can never start: Slurm's pending reasons that waiting cannot resolve, and the
partition limits that can be checked before submitting (one `scontrol show partition`).

A job pending for "Priority" or "Resources" starts eventually; one pending for
"PartitionTimeLimit" or "InvalidAccount" waits forever unless an administrator changes
something. The waiter ends at once on such a reason, with the cause and what to do.
("PartitionConfig" is not among them: Slurm 22.05 shows it for a moment on a new job before
the scheduler names the real reason.)
"""

from __future__ import annotations

import re

from hpcdesk.scheduler import Partition
from hpcdesk.schema import slurm_time_seconds

_CHECK_SINFO = "see the partitions and their limits with `sinfo -o '%P %a %l %D'`"
_CHECK_ASSOC = "see your accounts and limits with `sacctmgr show assoc user=$USER`"

# reason (prefix) -> (cause, next step)
REASONS: dict[str, tuple[str, str]] = {
    "PartitionTimeLimit": ("the time limit asked for is longer than the partition allows",
                           "ask for less time (-t) or pick a partition with a longer MaxTime; "
                           + _CHECK_SINFO),
    "PartitionNodeLimit": ("the job asks for more nodes than the partition allows",
                           "pick another partition; " + _CHECK_SINFO),
    "PartitionDown": ("the partition is down", "pick another partition (-p); " + _CHECK_SINFO),
    "PartitionInactive": ("the partition is inactive",
                          "pick another partition (-p); " + _CHECK_SINFO),
    "InvalidAccount": ("the account is invalid", "set scheduler.account (-A) to one of "
                       "yours; " + _CHECK_ASSOC),
    "InvalidQOS": ("the QOS is invalid", "set scheduler.qos (-q) to one you may use; "
                   + _CHECK_ASSOC),
    "QOSMaxWallDurationPerJobLimit": ("the time limit asked for is longer than the QOS allows",
                                      "ask for less time (-t) or use another QOS (-q)"),
    "AssocMaxWallDurationPerJobLimit": (
        "the time limit asked for is longer than your association allows",
        "ask for less time (-t); " + _CHECK_ASSOC),
    "AssocMaxJobsLimit": ("your association may not run this job (MaxJobs)",
                          "end one of your other jobs, or ask the site to raise the limit; "
                          + _CHECK_ASSOC),
    "QOSMaxGRESPerJob": ("the job asks for more GPUs than the QOS allows per job",
                         "ask for fewer GPUs (-G) or use another QOS (-q)"),
    "QOSMaxCpuPerJobLimit": ("the job asks for more CPUs than the QOS allows per job",
                             "ask for fewer CPUs (-c) or use another QOS (-q)"),
    "QOSMaxMemoryPerJob": ("the job asks for more memory than the QOS allows per job",
                           "ask for less memory (--mem) or use another QOS (-q)"),
    "BadConstraints": ("no node can satisfy the job's constraints",
                       "check scheduler.constraint and the resources asked for"),
    "AccountNotAllowed": ("the partition does not accept this account",
                          "pick another partition or account; " + _CHECK_SINFO),
    "QOSNotAllowed": ("the partition does not accept this QOS",
                      "pick another partition or QOS; " + _CHECK_SINFO),
}
# "ReqNodeNotAvail, UnavailableNodes:gpu01": hopeless only when a required node is down.
_DOWN_NODE = re.compile(r"ReqNodeNotAvail.*UnavailableNodes:\S+", re.IGNORECASE)


def why_unstartable(reason: str, down_nodes: set[str] | None = None) -> tuple[str, str] | None:
    """(cause, next step) when Slurm's pending `reason` cannot resolve by waiting."""
    word = reason.split(",")[0].strip()
    for key, found in REASONS.items():
        if word.startswith(key):
            return found
    if _DOWN_NODE.search(reason) and down_nodes:
        listed = set(reason.split("UnavailableNodes:", 1)[1].strip(" )").split(","))
        if listed & down_nodes:
            return (f"a node the job requires is down ({', '.join(sorted(listed & down_nodes))})",
                    "drop --nodelist/--nodes from scheduler.extra_args, or wait for the node "
                    "to return; see `sinfo -R`")
    return None


def check_request(partitions: dict[str, Partition], wanted: str | None,
                  time_limit: str) -> tuple[str, str] | None:
    """(cause, next step) when no partition the job may use can ever run it."""
    names = wanted.split(",") if wanted else [p.name for p in partitions.values() if p.default]
    chosen = [partitions[n] for n in names if n in partitions]
    if not chosen:
        return None  # unknown here: sbatch gives its own clear answer
    seconds = slurm_time_seconds(time_limit)
    problems = []
    for p in chosen:
        if p.state in ("DOWN", "INACTIVE", "DRAIN"):
            problems.append((f"partition {p.name} is {p.state.lower()}",
                             "pick another partition (-p); " + _CHECK_SINFO))
        elif p.max_seconds is not None and seconds > p.max_seconds:
            problems.append((f"the time limit {time_limit} is longer than partition "
                             f"{p.name}'s MaxTime {p.max_time}",
                             f"ask for at most {p.max_time} (-t {p.max_time}), or pick a "
                             "partition with a longer MaxTime; " + _CHECK_SINFO))
        else:
            return None  # this one can run it
    return ("; ".join(c for c, _ in problems), problems[0][1]) if problems else None
