"""Changing a running VM's vCPUs and RAM through QMP, as far as QEMU and the guest allow.

vCPUs: QEMU starts with `-smp N,maxcpus=M` (VmSpec.cpu_slots); adding fills free slots with
device_add, removing asks the guest to eject vCPUs (device_del, ACPI) and counts the
DEVICE_DELETED events that say it did. The boot vCPU (core 0) never goes. A hot-added vCPU
is offline in the guest until the guest onlines it (a udev rule; ctd puts one in its template
disks); QEMU cannot see that, so the answer says what ctd knows (online_note).

RAM: a virtio balloon. Lowering asks the guest to hand pages back; raising lets it take them
again, but never past the -m size QEMU booted with (more needs a restart). What the guest
actually has is what its balloon driver reports, so a guest without one stays as it was.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ctd.errors import OperationFailed
from ctd.instance.vm.qmp import HotpluggableCpu, Qmp

EJECT_TIMEOUT = 15.0     # a guest under TCG takes a few seconds to offline and eject a vCPU
BALLOON_TIMEOUT = 10.0   # and to move a few hundred MiB through its balloon (~1 s per 100 MiB)
MiB = 1 << 20


@dataclass(frozen=True)
class Resized:
    """What the running VM has after the change, and why it is not what was asked."""

    value: int               # vCPUs, or bytes of RAM the guest has
    wanted: int
    note: str | None = None  # None: done live

    @property
    def live(self) -> bool:
        return self.note is None


def _core(slot: HotpluggableCpu) -> tuple[int, int, int]:
    props = slot.get("props", {})
    return (props.get("socket-id", 0), props.get("core-id", 0), props.get("thread-id", 0))


async def set_vcpus(qmp: Qmp, wanted: int, eject_timeout: float = EJECT_TIMEOUT) -> Resized:
    slots = await qmp.hotpluggable_cpus()
    present = sorted((s for s in slots if "qom-path" in s), key=_core)
    free = sorted((s for s in slots if "qom-path" not in s), key=_core)
    if wanted > len(slots):
        return Resized(len(present), wanted, f"this VM was started with room for {len(slots)} vCPU(s); "
                       f"{wanted} applies at next start")
    if wanted > len(present):
        for slot in free[:wanted - len(present)]:
            ids = "-".join(str(i) for i in _core(slot))
            await qmp.device_add(slot["type"], f"vcpu-{ids}", **slot["props"])
        return Resized(await qmp.vcpu_count(), wanted)
    if wanted == len(present):
        return Resized(wanted, wanted)
    victims = present[1:][::-1][:len(present) - wanted]   # newest first; the boot vCPU stays
    async with qmp.events("DEVICE_DELETED") as events:
        for slot in victims:
            await qmp.device_del(slot["qom-path"])
        deadline = time.monotonic() + eject_timeout
        gone = 0
        while gone < len(victims) and (left := deadline - time.monotonic()) > 0:
            event = await qmp.wait_event(events, left)
            if event is None:
                break
            if str(event.get("data", {}).get("path", "")).startswith("/machine"):
                gone += 1
    now = await qmp.vcpu_count()
    if now > wanted:
        return Resized(now, wanted, f"the guest released only {len(present) - now} of {len(victims)} vCPU(s) "
                       f"within {eject_timeout:g} s (no CPU hot-unplug support?); {wanted} applies at next start")
    return Resized(now, wanted)


def online_note(guest_udev: bool | None, added: int) -> str | None:
    """What to tell about vCPUs just hot-added: QEMU cannot see whether the guest onlined them.
    guest_udev: True for a disk ctd built with udev (its rule onlines them), False without
    (busybox), None for an installed guest ctd knows nothing of."""
    if added <= 0 or guest_udev:
        return None
    if guest_udev is False:
        return (f"{added} vCPU(s) added to the VM, but this guest has no udev to bring them online: it uses them "
                "after a restart (or: echo 1 > /sys/devices/system/cpu/cpuN/online inside)")
    return (f"{added} vCPU(s) added to the VM; the guest must bring them online itself (most distributions do, "
            "with a udev rule); ctd cannot see whether it did")


async def set_ram(qmp: Qmp, boot_ram: int, wanted: int, timeout: float = BALLOON_TIMEOUT) -> Resized:
    """Balloon the guest to min(wanted, boot_ram); wait until its driver reports it got there."""
    target = min(wanted, boot_ram)
    try:
        await qmp.balloon(target)
    except OperationFailed as e:   # no balloon device (compat guests), or not activated yet
        actual = boot_ram
        return Resized(actual, wanted, f"cannot resize RAM live ({e.message}); applies at next start")
    deadline = time.monotonic() + timeout
    actual = await qmp.balloon_actual()
    while abs(actual - target) >= MiB and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        actual = await qmp.balloon_actual()
    if wanted > boot_ram:
        return Resized(actual, wanted, f"the VM booted with {boot_ram // MiB} MiB, the most it can have "
                       f"while it runs; {wanted // MiB} MiB applies at next start")
    if abs(actual - target) >= MiB:
        return Resized(actual, wanted, f"the guest has {actual // MiB} MiB after {timeout:g} s (no balloon "
                       f"driver, or it cannot free more); {wanted // MiB} MiB applies at next start")
    return Resized(actual, wanted)
