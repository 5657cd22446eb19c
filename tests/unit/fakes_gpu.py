"""FakeGpuBackend: a stand-in for NVML in unit tests (a fake, named as one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcdesk.node.gpu import Device, NoNvidiaDriver


def fake_device(index: int, *, minor: int | None = None, bus: int | None = None,
                domain: int = 0, name: str = "NVIDIA H100 80GB HBM3",
                display_active: bool = False, display_mode: bool = False,
                mig_uuids: tuple[str, ...] = (), pci_bus_id: str | None = None) -> Device:
    """A GPU whose UUID, bus and minor derive from ``index`` unless given."""
    bus = 0x10 + 0x20 * index if bus is None else bus
    return Device(
        index=index,
        uuid=f"GPU-{index:08x}-1111-2222-3333-{bus:012x}",
        pci_bus_id=pci_bus_id or f"{domain:08x}:{bus:02x}:00.0",
        minor=index if minor is None else minor,
        name=name,
        driver_version="580.159.04",
        display_active=display_active,
        display_mode=display_mode,
        mig_enabled=bool(mig_uuids),
        mig_uuids=mig_uuids,
    )


@dataclass
class FakeGpuBackend:
    """GpuBackend with canned devices; ``fail`` makes open() raise NoNvidiaDriver."""

    fake_devices: list[Device] = field(default_factory=list)
    version: str = "580.159.04"
    fail: str | None = None
    opened: int = 0
    closed: int = 0

    def open(self) -> None:
        if self.fail is not None:
            raise NoNvidiaDriver(self.fail)
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def driver_version(self) -> str:
        return self.version

    def devices(self) -> list[Device]:
        return list(self.fake_devices)
