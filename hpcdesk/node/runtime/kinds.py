"""The runtime for `runtime.kind`: apptainer (the desktop image) or host (processes on the
node). Apart from the runtime package's contract (__init__.py), so that the runtimes, which
import the contract, and the choice of one never import each other in a circle."""

from __future__ import annotations

from hpcdesk.node.runtime import Runtime


def get_runtime(kind: str) -> Runtime:
    if kind == "apptainer":
        from hpcdesk.node.runtime.apptainer import ApptainerRuntime

        return ApptainerRuntime()
    from hpcdesk.node.runtime.host import HostRuntime

    return HostRuntime()
