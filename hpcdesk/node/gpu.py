"""The allocated NVIDIA GPU: list the node's GPUs through NVML, map Slurm's allocation to them.

NVML ignores CUDA_VISIBLE_DEVICES and numbers GPUs its own way, so an NVML index is never used
to find the allocated GPU. The allocation is read, in this order of trust, from:

1. device cgroups: when only some ``/dev/nvidiaN`` can be opened, those are the allocation;
2. ``CUDA_VISIBLE_DEVICES`` holding UUIDs (``GPU-...``, or ``MIG-...`` of a MIG instance);
3. ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS``: GRES indices, which follow the order of the
   ``File=`` devices in gres.conf; with ``/dev/nvidia[0-N]`` (and NVML autodetection) that is
   the minor number N, which NVML reports per GPU;
4. ``CUDA_VISIBLE_DEVICES`` / ``GPU_DEVICE_ORDINAL`` holding indices, without cgroups: the
   position among the GPUs sorted by PCI bus id (CUDA's ``PCI_BUS_ID`` order).

PCI bus ids: NVML's hex form is normalised here (:func:`normalize_bus_id`) and converted to
the decimal ``BusID`` that xorg.conf wants (:func:`bus_id_from_nvml`).

A node without NVIDIA driver or without ``pynvml`` is not an error: :func:`inventory` returns
an empty list and the reason, and the desktop takes the software path.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AllocationError",
    "Device",
    "DisplayActiveError",
    "GpuBackend",
    "GpuInventory",
    "NoNvidiaDriver",
    "NvmlBackend",
    "bus_id_from_nvml",
    "check_display_free",
    "choose_display_gpu",
    "inventory",
    "normalize_bus_id",
    "resolve_allocation",
    "resolve_allocation_explained",
    "scan_dev_nodes",
]

NO_DRIVER = (
    "no NVIDIA driver: the desktop will use software rendering (Xorg dummy driver + x264enc)"
)

_DEV_NODE_RE = re.compile(r"^nvidia(\d+)$")
_NVML_BUS_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})"
    r"\.(?P<func>[0-7])$"
)


class NoNvidiaDriver(RuntimeError):
    """NVML cannot be used here; ``str(exc)`` says why, for the user."""


class AllocationError(ValueError):
    """Slurm's GPU allocation cannot be matched to this node's GPUs; the message says why."""


class DisplayActiveError(RuntimeError):
    """The GPU already drives a display (an X server runs on it) or cannot do graphics."""


@dataclass(frozen=True)
class Device:
    """One physical GPU as NVML reports it. ``index`` is NVML's: informational only."""

    index: int
    uuid: str
    pci_bus_id: str  # NVML's hex form, normalised: 00000000:3b:00.0
    minor: int | None  # N of /dev/nvidiaN
    name: str
    driver_version: str
    display_active: bool | None = None  # an X server (or console) drives a display on it
    display_mode: bool | None = None  # NVML display mode; no proof of outputs (H100: 1)
    mig_enabled: bool = False
    mig_uuids: tuple[str, ...] = field(default=())

    @property
    def xorg_bus_id(self) -> str:
        """The decimal BusID that xorg.conf wants."""
        return bus_id_from_nvml(self.pci_bus_id)

    def label(self) -> str:
        return f"{self.name} {self.uuid} at {self.pci_bus_id} ({self.xorg_bus_id})"


class GpuBackend(Protocol):
    """What the agent needs from NVML; tests use a fake of it."""

    def open(self) -> None:
        """Start using the library; raise NoNvidiaDriver with a clear reason when it can't."""

    def close(self) -> None: ...

    def driver_version(self) -> str: ...

    def devices(self) -> list[Device]: ...


@dataclass
class GpuInventory:
    """The outcome of asking the backend: never raises, ``error`` says why it is empty."""

    driver_version: str | None
    devices: list[Device]
    error: str | None = None


def normalize_bus_id(bus_id: str) -> str:
    """Any hex PCI bus id form (``0000:3B:00.0``, ``00000000:3b:00.0``) -> ``00000000:3b:00.0``."""
    text = bus_id.strip().lower()
    parts = re.split(r"[:.]", text)
    if len(parts) == 3:
        parts.insert(0, "0")
    if len(parts) != 4:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    try:
        domain, bus, dev, func = (int(part, 16) for part in parts)
    except ValueError:
        raise ValueError(f"not a PCI bus id: {bus_id!r}") from None
    return f"{domain:08x}:{bus:02x}:{dev:02x}.{func:x}"


def bus_id_from_nvml(hex_bus_id: str) -> str:
    """NVML/nvidia-smi PCI bus id (hex, ``00000000:00:06.0``) -> Xorg BusID (decimal).

    ``"00000000:00:06.0"`` -> ``"PCI:0:6:0"``; a non-zero domain gives the ``bus@domain``
    form of xorg.conf(5): ``"00000001:8a:00.0"`` -> ``"PCI:138@1:0:0"``.
    """
    match = _NVML_BUS_RE.match(hex_bus_id.strip())
    if match is None:
        raise ValueError(
            f"not a PCI bus id: {hex_bus_id!r} (expected DOMAIN:BUS:DEVICE.FUNCTION in hex, "
            "like 00000000:3b:00.0)"
        )
    domain = int(match["domain"] or "0", 16)
    bus, dev, func = int(match["bus"], 16), int(match["dev"], 16), int(match["func"], 16)
    if dev > 31:
        raise ValueError(f"PCI device number {dev} out of range in {hex_bus_id!r}")
    where = f"{bus}@{domain}" if domain else f"{bus}"
    return f"PCI:{where}:{dev}:{func}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """GpuBackend through ``pynvml`` (package nvidia-ml-py), imported only when opened."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def open(self) -> None:
        try:
            import pynvml  # optional dependency, absent on CPU nodes
        except ImportError:
            raise NoNvidiaDriver(
                "the Python NVML binding is missing (pip install nvidia-ml-py, or "
                "hpcdesk[gpu]); " + NO_DRIVER
            ) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NoNvidiaDriver(_nvml_init_reason(pynvml, exc)) from None
        except OSError as exc:  # a broken libnvidia-ml.so
            raise NoNvidiaDriver(f"libnvidia-ml.so.1 failed to load ({exc}); {NO_DRIVER}") from None
        self._nvml = pynvml

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            finally:
                self._nvml = None

    def driver_version(self) -> str:
        return _text(self._nvml.nvmlSystemGetDriverVersion())

    def devices(self) -> list[Device]:
        nvml = self._nvml
        version = self.driver_version()
        found: list[Device] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                found.append(_nvml_device(nvml, handle, index, version))
            except nvml.NVMLError:  # no permission (device cgroup) or a GPU that fell off
                continue
        return found


def _nvml_init_reason(nvml: Any, exc: Exception) -> str:
    not_found = getattr(nvml, "NVMLError_LibraryNotFound", ())
    not_loaded = getattr(nvml, "NVMLError_DriverNotLoaded", ())
    if not_found and isinstance(exc, not_found):
        return f"libnvidia-ml.so.1 not found; {NO_DRIVER}"
    if not_loaded and isinstance(exc, not_loaded):
        return f"the NVIDIA kernel module is not loaded; {NO_DRIVER}"
    return f"NVML failed to initialise ({exc}); {NO_DRIVER}"


def _query(func: Any, *args: Any) -> Any:
    """One NVML call whose failure (not supported, no permission) only loses that field."""
    try:
        return func(*args)
    except Exception:  # pynvml raises NVMLError subclasses; any failure loses the field only
        return None


def _nvml_device(nvml: Any, handle: Any, index: int, version: str) -> Device:
    pci = nvml.nvmlDeviceGetPciInfo(handle)
    bus_id = normalize_bus_id(_text(pci.busId))
    active = _query(nvml.nvmlDeviceGetDisplayActive, handle)
    mode = _query(nvml.nvmlDeviceGetDisplayMode, handle)
    mig = _query(nvml.nvmlDeviceGetMigMode, handle)
    mig_enabled = bool(mig and mig[0])
    mig_uuids: list[str] = []
    if mig_enabled:
        for slot in range(_query(nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            mig_handle = _query(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot)
            if mig_handle is not None:
                mig_uuids.append(_text(nvml.nvmlDeviceGetUUID(mig_handle)))
    return Device(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=bus_id,
        minor=_query(nvml.nvmlDeviceGetMinorNumber, handle),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        driver_version=version,
        display_active=None if active is None else bool(active),
        display_mode=None if mode is None else bool(mode),
        mig_enabled=mig_enabled,
        mig_uuids=tuple(mig_uuids),
    )


@contextmanager
def _opened(backend: GpuBackend) -> Iterator[GpuBackend]:
    backend.open()
    try:
        yield backend
    finally:
        backend.close()


def inventory(backend: GpuBackend | None = None) -> GpuInventory:
    """The node's GPUs and driver version; on any failure an empty inventory with the reason."""
    backend = backend if backend is not None else NvmlBackend()
    try:
        with _opened(backend) as opened:
            return GpuInventory(opened.driver_version(), opened.devices())
    except NoNvidiaDriver as exc:
        return GpuInventory(None, [], str(exc))
    except Exception as exc:  # a driver in a bad state must not kill the agent
        return GpuInventory(None, [], f"NVML query failed ({exc}); {NO_DRIVER}")


def scan_dev_nodes(dev_dir: Path = Path("/dev")) -> dict[int, bool]:
    """``/dev/nvidiaN`` minor -> whether this process may open it (device cgroups say no).

    ``os.access`` does not see device cgroups, so each node is really opened (and closed).
    """
    nodes: dict[int, bool] = {}
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return nodes
    for name in names:
        match = _DEV_NODE_RE.match(name)
        if match is None:
            continue
        try:
            fd = os.open(dev_dir / name, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            nodes[int(match[1])] = exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOENT)
            continue
        os.close(fd)
        nodes[int(match[1])] = True
    return dict(sorted(nodes.items()))


def _split(value: str | None) -> list[str]:
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def _is_uuid(item: str) -> bool:
    return item.upper().startswith(("GPU-", "MIG-"))


def _by_uuid(items: Sequence[str], devices: Sequence[Device]) -> list[Device]:
    chosen: list[Device] = []
    for item in items:
        wanted = item.lower()
        matches = [
            dev
            for dev in devices
            if dev.uuid.lower().startswith(wanted)
            or any(mig.lower().startswith(wanted) for mig in dev.mig_uuids)
        ]
        if len(matches) != 1:
            what = "no GPU on this node has" if not matches else "several GPUs match"
            raise AllocationError(
                f"CUDA_VISIBLE_DEVICES names {item}, but {what} that UUID "
                f"(GPUs here: {', '.join(d.uuid for d in devices) or 'none'})"
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _by_minor(minors: Sequence[int], devices: Sequence[Device], source: str) -> list[Device]:
    by_minor = {dev.minor: dev for dev in devices if dev.minor is not None}
    missing = [m for m in minors if m not in by_minor]
    if missing:
        raise AllocationError(
            f"{source} lists GPU {', '.join(map(str, missing))}, but this node has no "
            f"/dev/nvidia{missing[0]} among NVML's GPUs (minors: "
            f"{', '.join(map(str, sorted(by_minor))) or 'none'}); check that gres.conf's "
            "File= lines name /dev/nvidiaN in order"
        )
    return [by_minor[m] for m in dict.fromkeys(minors)]


def _ints(items: Sequence[str], source: str) -> list[int]:
    try:
        return [int(item) for item in items]
    except ValueError:
        raise AllocationError(f"{source}={','.join(items)} is not a list of GPU numbers") from None


def resolve_allocation_explained(
    env: Mapping[str, str], devices: Sequence[Device], dev_nodes: Mapping[int, bool]
) -> tuple[list[Device], str]:
    """Like :func:`resolve_allocation`, plus one sentence on how the GPUs were found."""
    cuda = _split(env.get("CUDA_VISIBLE_DEVICES"))
    slurm_source = "SLURM_STEP_GPUS" if env.get("SLURM_STEP_GPUS") else "SLURM_JOB_GPUS"
    slurm = _split(env.get(slurm_source))
    ordinal = _split(env.get("GPU_DEVICE_ORDINAL"))

    if cuda in (["NoDevFiles"], ["-1"]) or (
        "CUDA_VISIBLE_DEVICES" in env and not cuda and not slurm
    ):
        return [], "CUDA_VISIBLE_DEVICES hides every GPU: no GPU in this allocation"

    openable = {minor for minor, ok in dev_nodes.items() if ok}
    cgroup_limited = bool(dev_nodes) and len(openable) < len(dev_nodes)
    if cgroup_limited:
        chosen = [dev for dev in devices if dev.minor in openable]
        if cuda and all(_is_uuid(item) for item in cuda):
            chosen = [dev for dev in _by_uuid(cuda, devices) if dev.minor in openable] or chosen
        how = (
            f"device cgroups allow /dev/nvidia{','.join(map(str, sorted(openable)))}"
            if openable
            else "device cgroups allow no /dev/nvidiaN"
        )
        if slurm and not cuda:
            listed = set(_ints(slurm, slurm_source))
            if listed != openable:
                how += f" ({slurm_source}={','.join(slurm)} differs: trusting the cgroups)"
        return chosen, how
    if cuda and all(_is_uuid(item) for item in cuda):
        return _by_uuid(cuda, devices), "CUDA_VISIBLE_DEVICES names the GPUs by UUID"
    if slurm:
        minors = _ints(slurm, slurm_source)
        return _by_minor(minors, devices, slurm_source), (
            f"{slurm_source}={','.join(slurm)} read as /dev/nvidiaN minor numbers"
        )
    indices_source, indices = (
        ("CUDA_VISIBLE_DEVICES", cuda) if cuda else ("GPU_DEVICE_ORDINAL", ordinal)
    )
    if indices:
        if any(_is_uuid(item) for item in indices):
            raise AllocationError(
                f"{indices_source}={','.join(indices)} mixes UUIDs and numbers; use one kind"
            )
        positions = _ints(indices, indices_source)
        in_pci_order = sorted(devices, key=lambda dev: dev.pci_bus_id)
        bad = [p for p in positions if not 0 <= p < len(in_pci_order)]
        if bad:
            raise AllocationError(
                f"{indices_source}={','.join(indices)} asks for GPU {bad[0]}, but this node "
                f"has {len(in_pci_order)} GPU(s)"
            )
        chosen = [in_pci_order[p] for p in dict.fromkeys(positions)]
        return chosen, f"{indices_source}={','.join(indices)} read in PCI bus order"
    return [], "no GPU in this allocation (no SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES or cgroups)"


def resolve_allocation(
    env: Mapping[str, str], devices: Sequence[Device], dev_nodes: Mapping[int, bool]
) -> list[Device]:
    """The GPUs that Slurm gave this job, as NVML devices (by UUID, minor or bus id).

    ``env`` is the job environment, ``devices`` the node's GPUs from the backend and
    ``dev_nodes`` the result of :func:`scan_dev_nodes`. Returns ``[]`` when the job has no
    GPU; raises :class:`AllocationError` when the allocation names GPUs that are not here.
    """
    return resolve_allocation_explained(env, devices, dev_nodes)[0]


def check_display_free(device: Device) -> None:
    """Raise :class:`DisplayActiveError` when this GPU cannot host the desktop's own Xorg."""
    if device.mig_enabled:
        raise DisplayActiveError(
            f"GPU {device.label()} is in MIG mode, which has no graphics (no X server, "
            "OpenGL or Vulkan): ask for a GPU without MIG, or use the software desktop"
        )
    if device.display_active:
        raise DisplayActiveError(
            f"GPU {device.label()} already has an active display: another X server runs on "
            "it, and a second one would fight it for the GPU. Use the EGL flavour "
            "(flavour: egl), which shares a GPU through VirtualGL, or ask for another GPU"
        )


def choose_display_gpu(devices: Sequence[Device]) -> Device:
    """The first allocated GPU that can host our Xorg; DisplayActiveError if none can."""
    if not devices:
        raise DisplayActiveError("this job has no GPU: use the software desktop")
    problems: list[str] = []
    for device in devices:
        try:
            check_display_free(device)
        except DisplayActiveError as exc:
            problems.append(str(exc))
            continue
        return device
    raise DisplayActiveError("; ".join(problems))
