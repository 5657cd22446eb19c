"""hpcdesk: GPU-accelerated Linux desktops in the browser, as one Slurm job."""

__version__ = "0.1.0"
