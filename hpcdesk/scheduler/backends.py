"""Which scheduler backend serves this host: `scheduler.backend` (slurm-cli, pyslurm, auto)
chosen without connecting, with the reason `hpcdesk doctor` shows; the backend itself."""

from __future__ import annotations

from pathlib import Path

from hpcdesk.scheduler import Scheduler


def select_backend(backend: str, cluster: str | None) -> tuple[str, str]:
    """The backend to use for `scheduler.backend` and the reason, without connecting."""
    if backend == "slurm-cli":
        return "slurm-cli", "scheduler.backend is slurm-cli"
    from hpcdesk.scheduler.slurm_pyslurm import NO_MULTI_CLUSTER, probe

    if backend == "auto" and cluster:
        return "slurm-cli", f"auto: scheduler.cluster is set ({NO_MULTI_CLUSTER})"
    found = probe()
    if backend == "pyslurm":
        if not found.usable:
            from hpcdesk.errors import ConfigError

            raise ConfigError(f"scheduler.backend: pyslurm cannot be used here: {found.reason}",
                              hint="set scheduler.backend to auto or slurm-cli")
        return "pyslurm", found.reason
    if found.usable:
        return "pyslurm", f"auto: {found.reason}"
    return "slurm-cli", f"auto: {found.reason}; using the Slurm commands"


def get_scheduler(backend: str, cache_dir: Path | None = None,
                  cluster: str | None = None, timeout: float = 30.0) -> Scheduler:
    """The backend; `cache_dir` (private to the user) lets processes share queue snapshots;
    `timeout`: seconds one Slurm command may take (the commands backend)."""
    name, _why = ("slurm-cli", "") if backend == "slurm-cli" else select_backend(backend, cluster)
    if name == "pyslurm":
        from hpcdesk.scheduler.slurm_pyslurm import Pyslurm, probe

        module = probe().module
        assert module is not None  # select_backend chose it because it imports
        return Pyslurm(module, cache_dir=cache_dir)
    from hpcdesk.scheduler.slurm_cli import SlurmCli

    return SlurmCli(timeout=timeout, cache_dir=cache_dir)
