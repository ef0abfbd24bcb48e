"""Live migration of a running VM (docs/cluster.md, "Migration"): QEMU's own migration, with the
disks copied while the guest runs, both tunnelled through ctd's mutual TLS (vm_tunnel.py).

    target  the VM made there from empty sparse disks of the right sizes (vm_migrate_receive),
            QEMU started paused with `-incoming defer`; its NBD server on a unix socket exports
            each disk writable; `migrate-incoming` on another unix socket
    source  `drive-mirror` of each disk into the target's export (through the tunnel; the guest
            keeps writing: the mirror follows), until every job is READY; then `migrate` (RAM,
            devices: QEMU's pre-copy, the guest paused only for the last round); QEMU pauses
            before the switch-over (`pause-before-switchover`: vCPUs stopped, the disks still
            its own), the mirrors are cancelled there, in sync (QEMU's documented end of a
            mirror: the target holds the disk as at that instant), the migration finishes, and
            the target is resumed (`nbd-server-stop`, `cont`)
    after   the etcd keys switched (migrate._switch), then the source's QEMU (paused since the
            end of the migration) and copy removed

The downtime is QEMU's (query-migrate `downtime`: from the source's vCPUs' stop, through the
mirrors' end, until the last state went) plus the resume on the target, both in the answer.
A failure at any step (the target gone, QEMU's migration failed) cancels the jobs,
resumes the source's guest if QEMU had paused it, and aborts the migration on the target: the VM
runs on where it was. UEFI variables (a pflash QEMU does not migrate) and a TPM (swtpm's state)
are not carried live: such a VM migrates stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd.cluster.vm_tunnel import SourceRelay
from ctd.errors import Conflict, CtdError, OperationFailed
from ctd.events.model import Lifecycle
from ctd.instance.reserve import CREATING
from ctd.instance.vm import datadisks
from ctd.instance.vm.firmware import settings as firmware_settings
from ctd.instance.vm.qmp import Qmp
from ctd.state import InstanceRecord, PowerState
from ctd.state.options import VmOptions

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.cluster.migrate import Target
    from ctd.cluster.vm_migrate_receive import VmIncoming
    from ctd.instance.vm.driver import RunningVm
    from ctd.operations import Operation

READY_TIMEOUT = 3600.0   # the disks' copy: as long as it takes, while the guest lets it converge
MIGRATE_TIMEOUT = 3600.0
POLL = 0.2
ARRIVAL_WAIT = 30.0   # the last bytes of a completed migration still crossing the relay


def devices(vm: VmOptions) -> list[str]:
    """QEMU's drive ids of the VM's disks (argv.py's naming)."""
    return ["drive-disk0", *(f"drive-{datadisks.device_id(d.name)}" for d in vm.data_disks)]


def refuse(rec: InstanceRecord) -> None:
    """What does not migrate live (said before anything starts)."""
    fw = firmware_settings(rec.options.vm or VmOptions())
    if fw.uefi or fw.tpm:
        raise Conflict(f"{rec.name} has UEFI variables or a TPM, which QEMU does not carry live: stop it and "
                       f"migrate it stopped (ctctl stop {rec.name})")


# ------------------------------------------------------------------ the target's side


async def start_incoming(c: ApiContext, inc: VmIncoming, rec: InstanceRecord) -> None:
    """QEMU of the new VM, paused, waiting for the migration; its disks exported over NBD."""
    instances = c.instances
    vms = c.transfers.vms.kind._vms
    async with instances.lock(rec):
        rec = instances.get(rec.id)
        vm = await vms.start(rec, instances.resources(rec), paused=True, incoming=True)
        rec.pid, rec.pid_start, rec.state = vm.pid, vm.start_time, PowerState.SUSPENDED
        instances.db.update_instance(rec)
    q = _qmp(vm)
    nbd, incoming = vm.spec.run_dir / "migrate-nbd.sock", vm.spec.run_dir / "migrate-in.sock"
    await q.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd)}}})
    nodes: dict[Any, Any] = {}
    for block in await q.query_block():
        inserted = block.get("inserted")
        nodes[block.get("device")] = inserted.get("node-name") if isinstance(inserted, dict) else None
    for dev in devices(rec.options.vm or VmOptions()):
        if not nodes.get(dev):
            raise OperationFailed(f"the target QEMU has no disk {dev}")
        await q.execute("block-export-add", {"type": "nbd", "id": dev, "node-name": nodes[dev], "name": dev,
                                             "writable": True})
    await q.execute("migrate-incoming", {"uri": f"unix:{incoming}"})
    inc.sockets = {"nbd": nbd, "migrate": incoming}
    # until the guest runs here, the VM is one being made: a ctd killed meanwhile drops it at its
    # next start, its QEMU ended (recovery.py), as the etcd keys never named this node
    (instances.storage.instance_path(rec.name) / CREATING).touch()


async def resume(c: ApiContext, inc: VmIncoming) -> dict[str, Any]:
    """The migration arrived: the exports end and the guest runs here."""
    instances = c.instances
    assert inc.rec is not None
    vm = c.transfers.vms.kind._vms.running.get(inc.name)
    if vm is None:
        raise OperationFailed(f"the target QEMU of {inc.name} is gone")
    q = _qmp(vm)
    await _arrived(q, inc.name)
    await q.execute("nbd-server-stop")
    (instances.storage.instance_path(inc.name) / CREATING).unlink(missing_ok=True)
    async with instances.lock(inc.rec):
        rec = instances.get(inc.rec.id)
        await q.cont()
        rec.state = PowerState.RUNNING
        instances.db.update_instance(rec)
        instances.emit(rec, Lifecycle.STARTED, pid=rec.pid, via="migrate")
    return instances.brief(instances.get(inc.rec.id))


async def _arrived(q: Qmp, name: str) -> None:
    """The incoming migration completed here. The source's QEMU says `completed` once it has sent
    the last bytes; they still cross ctd's relay, so the target may be `active` a moment longer."""
    deadline = time.monotonic() + ARRIVAL_WAIT
    while True:
        status = (await q.execute("query-migrate")).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise Conflict(f"the migration of {name} has not arrived here (QEMU says {status})")
        await asyncio.sleep(0.02)


def _qmp(vm: RunningVm) -> Qmp:
    if vm.qmp is None or not vm.qmp.connected:
        raise OperationFailed(f"no QMP session to {vm.name}'s QEMU")
    return vm.qmp


# ------------------------------------------------------------------ the source's side


async def _wait_ready(vm: RunningVm, q: Qmp, jobs: list[str], op: Operation) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if vm.exited.done():
            raise OperationFailed(f"{vm.name} stopped during its migration")
        found = {j["device"]: j for j in await q.query_block_jobs() if j.get("device") in jobs}
        if len(found) < len(jobs):
            raise OperationFailed(f"copying {vm.name}'s disks to the target failed (a mirror job ended: "
                                  "the target or the tunnel went away)")
        done, total = sum(j.get("offset", 0) for j in found.values()), sum(j.get("len", 0) for j in found.values())
        op.progress = f"disks: {done >> 20}/{total >> 20} MiB"
        if all(j.get("ready") for j in found.values()):
            return
        await asyncio.sleep(POLL)
    raise OperationFailed(f"the disks of {vm.name} did not converge in {READY_TIMEOUT:.0f} s")


async def _wait_migrated(vm: RunningVm, q: Qmp, relay: SourceRelay, op: Operation, until: str) -> dict[str, Any]:
    """query-migrate once its status is `until` (pre-switchover, completed)."""
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    while time.monotonic() < deadline:
        info: dict[str, Any] = await q.execute("query-migrate")
        status = info.get("status")
        if status == until:
            return info
        if status in ("failed", "cancelled"):
            raise OperationFailed(f"QEMU's migration of {vm.name} {status}: "
                                  f"{info.get('error-desc') or relay.failed or 'no reason given'}")
        ram = info.get("ram") or {}
        op.progress = f"memory: {ram.get('transferred', 0) >> 20} MiB sent, {ram.get('remaining', 0) >> 20} MiB left"
        await asyncio.sleep(POLL)
    raise OperationFailed(f"the migration of {vm.name} did not end in {MIGRATE_TIMEOUT:.0f} s")


async def _end_mirrors(q: Qmp, jobs: list[str]) -> None:
    """The mirrors, in sync, ended (the last writes flushed to the target first)."""
    for job in jobs:
        await q.execute("block-job-cancel", {"device": job})
    for _ in range(600):
        if not [j for j in await q.query_block_jobs() if j.get("device") in jobs]:
            return
        await asyncio.sleep(0.05)
    raise OperationFailed("the disk mirrors did not end")


async def undo(q: Qmp, jobs: list[str]) -> None:
    """Back to the guest running here as before."""
    with contextlib.suppress(CtdError, OSError):
        await q.execute("migrate_cancel")
    for job in jobs:
        with contextlib.suppress(CtdError, OSError):
            await q.execute("block-job-cancel", {"device": job, "force": True})
    with contextlib.suppress(CtdError, OSError):
        if await q.status() in ("postmigrate", "paused", "finish-migrate"):
            await q.cont()


async def send(c: ApiContext, vm: RunningVm, rec: InstanceRecord, target: Target, sid: str, base: str,
               op: Operation) -> dict[str, Any]:
    """Disks and memory to the target, which runs the guest after; returns the downtime's parts.
    On failure the guest runs here again (the caller aborts the target)."""
    q = _qmp(vm)
    devs = devices(rec.options.vm or VmOptions())
    jobs = [f"ctd-migrate-{dev}" for dev in devs]
    relay_dir = Path(c.instances.ctx.config.run_dir) / "migrate" / sid[:16]   # unix socket paths are short
    async with SourceRelay(target, sid, relay_dir) as relay:
        try:
            for dev, job in zip(devs, jobs, strict=True):
                await q.execute("drive-mirror", {
                    "job-id": job, "device": dev, "sync": "full", "mode": "existing", "format": "raw",
                    "target": f"nbd+unix:///{dev}?socket={relay.path('nbd')}"})
            await _wait_ready(vm, q, jobs, op)
            await q.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30, "downtime-limit": 300})
            # QEMU stops before the last state goes and before it gives up the disks: the
            # mirrors end there, in sync (the vCPUs are stopped), then the migration finishes
            await q.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "pause-before-switchover", "state": True}]})
            await q.execute("migrate", {"uri": f"unix:{relay.path('migrate')}"})
            await _wait_migrated(vm, q, relay, op, "pre-switchover")
            op.progress = "ending the disk mirrors"
            await _end_mirrors(q, jobs)
            await q.execute("migrate-continue", {"state": "pre-switchover"})
            info = await _wait_migrated(vm, q, relay, op, "completed")
            t0 = time.monotonic()
            op.progress = "resuming the guest on the target"
            await target.json("POST", f"{base}/{sid}/resume", {})
            after = time.monotonic() - t0
        except BaseException:
            await undo(q, jobs)
            raise
    qemu = float(info.get("downtime", 0)) / 1000
    return {"downtime": qemu + after, "parts": {"qemu": qemu, "resume_on_target": after},
            "memory": int((info.get("ram") or {}).get("transferred", 0)),
            "total_time": float(info.get("total-time", 0)) / 1000}
