"""The target node's side of a VM migration (docs/cluster.md, "Migration"; the source's is
ctd/cluster/vm_migrate.py). Driven by the source node over mutual TLS, as the member it is
(`certificate:node:SOURCE`; nobody else may):

    begin    the backup-style header, checked as a VM restore's (VmBackups.plan: no host path,
             disk size and firmware as at create), the NICs as a create's with the MACs they had
             (checked free here), the data disks (name rule and size as `disk add`), the cloud-init
             user-data/vendor-data (as at create), the list of files with their sizes (only the
             names a VM has: disk.raw, data-NAME.raw of its data disks, OVMF_VARS.fd of this
             host's template size for UEFI, tpm/FILE for a TPM) and the data bytes to come, which
             must fit the pool. The name and id are held; STORAGE/.restore-NAME-migrate-XXXX made.
    file     one file's sparse record stream (vm_files.py), each file once
    finish   every announced file received: the staging directory becomes the VM's, its row and
             NICs added, its seed written; it stays stopped (live: its QEMU waits, vm_live.py)
    abort    everything of the migration removed (after a finish too: the VM destroyed)

A failed request aborts the migration here at once; a ctd killed meanwhile removes the staging
directory at its next start (the restore prefix: backup.discard_partial). The etcd keys are
the source's to move (migrate._switch) once this node has the VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd import validate
from ctd.cluster import keys, vm_files
from ctd.cluster.migrate_receive import _nics, _with_macs
from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound
from ctd.events.model import Lifecycle
from ctd.instance.vm import datadisks, userdata
from ctd.instance.vm.kind import check_disk_size
from ctd.network.nics import NicRequest
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import DataDisk
from ctd.storage import backup
from ctd.storage.backup.format import RESTORE_PREFIX, VM_VARS
from ctd.storage.backup.vmarchive import TPM_NAME
from ctd.storage.base import unique_suffix

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.instance.vm.backup import VmRestorePlan

log = logging.getLogger("ctd.cluster.migrate")

MAX_TPM_FILE, MAX_TPM_FILES = 1 << 20, 16
POOL_MARGIN = 64 << 20            # the pool keeps this much free after the announced data
IDLE_LIMIT, IDLE_CHECK = 300, 10.0
_TASKS: set[asyncio.Task[None]] = set()


@dataclass
class VmIncoming:
    """One VM migration arriving here, between begin and finish/abort."""

    id: str
    source: str
    name: str
    instance_id: int
    project: str
    plan: VmRestorePlan
    nics: list[NicRequest]
    staging: Path
    files: dict[str, int]             # announced: name -> size in bytes
    budget: vm_files.Budget
    texts: dict[str, str]             # user_data / vendor_data
    created_at: str                   # the source's: the VM's uuid (and its seed's instance-id) follow from it
    got: set[str] = field(default_factory=set)
    busy: bool = False
    rec: InstanceRecord | None = None
    live: bool = False                # a running VM: its disks come through NBD (vm_live.py)
    sockets: dict[str, Path] = field(default_factory=dict)   # the target QEMU's, by tunnel stream
    touched: float = field(default_factory=time.monotonic)


INCOMING: dict[str, VmIncoming] = {}


def session(sid: str, source: str) -> VmIncoming:
    found = INCOMING.get(sid)
    if found is None or found.source != source:
        raise NotFound(f"no VM migration {sid} from node {source} is under way here (it was aborted or finished)")
    found.touched = time.monotonic()
    return found


def _int(raw: Any, what: str, low: int = 0) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < low:
        raise InvalidRequest(f"VM migration: {what} must be a number (at least {low})")
    return raw


def _data_disks(c: ApiContext, raw: Any) -> tuple[DataDisk, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > datadisks.MAX_DISKS:
        raise InvalidRequest(f"VM migration: data_disks must be a list of at most {datadisks.MAX_DISKS}")
    out: list[DataDisk] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"name", "size"}:
            raise InvalidRequest("VM migration: each data disk is {name, size}")
        name = item["name"]
        if not isinstance(name, str) or not datadisks.NAME.fullmatch(name) or any(d.name == name for d in out):
            raise InvalidRequest(f"VM migration: invalid or repeated data disk name {str(name)[:40]!r}")
        size = _int(item["size"], "a data disk's size", 1)
        check_disk_size(c.instances.ctx, size)
        out.append(DataDisk(name, size))
    return tuple(out)


def _files(raw: Any, plan: VmRestorePlan) -> dict[str, int]:
    """The announced files, each a name this VM may have with the size it must have."""
    if not isinstance(raw, dict):
        raise InvalidRequest("VM migration: files must be an object {name: size}")
    vm, expect = plan.vm, plan.expect
    sizes: dict[str, int] = {"disk.raw": vm.disk_size}
    sizes |= {datadisks.path(Path(), d.name).name: d.size for d in vm.data_disks}
    if expect.vars_size is not None:
        sizes[VM_VARS] = expect.vars_size
    tpm = [k for k in raw if isinstance(k, str) and k.startswith("tpm/")]
    if tpm and not expect.tpm or len(tpm) > MAX_TPM_FILES:
        raise InvalidRequest("VM migration: TPM state for a VM without a TPM, or too many files of it")
    out: dict[str, int] = {}
    for name, size in raw.items():
        size = _int(size, f"the size of {str(name)[:60]}")
        if isinstance(name, str) and name.startswith("tpm/") and TPM_NAME.fullmatch(name[4:]):
            if size > MAX_TPM_FILE:
                raise InvalidRequest(f"VM migration: {name} is larger than TPM state is")
        elif sizes.get(name) != size:
            raise InvalidRequest(f"VM migration: file {str(name)[:60]!r} of {size} bytes is not one this VM has "
                                 f"(expected: {', '.join(f'{k} {v}' for k, v in sizes.items())})")
        out[name] = size
    missing = sorted(set(sizes) - set(out) - {VM_VARS})   # UEFI variables: the template's if absent
    if missing:
        raise InvalidRequest(f"VM migration: missing {', '.join(missing)}")
    return out


def begin(c: ApiContext, source: str, body: dict[str, Any]) -> VmIncoming:
    """Check everything the source says and hold the name and id here."""
    header = backup.validate_header(body.get("header"))
    if header.get("type") != "vm":
        raise InvalidRequest("a VM migration's header is a VM backup's")
    plan = c.transfers.vms.plan(header, {})
    plan.vm = replace(plan.vm, data_disks=_data_disks(c, body.get("data_disks")))
    nics = _with_macs(c, _nics(c, header.get("meta", {}).get("nics")), body.get("macs"))
    files = _files(body.get("files"), plan)
    data = _int(body.get("data"), "data")
    if data > sum(files.values()):
        raise InvalidRequest("VM migration: more data announced than the files' sizes")
    free = c.instances.storage.pool_info().get("free")
    if free is not None and data + POOL_MARGIN > free:
        raise Conflict(f"VM migration: the VM's {data >> 20} MiB of data do not fit this node's pool "
                       f"({free >> 20} MiB free space, {POOL_MARGIN >> 20} MiB kept)")
    texts = {k: userdata.check(body[k], k) for k in userdata.KINDS if body.get(k) is not None}
    live = validate.boolean(body, "live")
    created_at = body.get("created_at")
    try:
        if not isinstance(created_at, str) or len(created_at) > 40:
            raise ValueError
        created_at = dt.datetime.fromisoformat(created_at).isoformat(timespec="seconds")
    except ValueError:
        raise InvalidRequest("VM migration: created_at must be the VM's creation time (ISO 8601)") from None
    if live and (plan.expect.vars_size is not None or plan.expect.tpm):
        raise InvalidRequest("VM migration: a VM with UEFI variables or a TPM migrates stopped")
    instance_id = _int(body.get("id"), "id", 1)
    project = body.get("project", "default")
    if not isinstance(project, str) or c.projects.store.get(project) is None and project != "default":
        raise InvalidRequest(f"VM migration: project {str(project)[:60]!r} does not exist on this node; make it here "
                             "first")
    name = plan.base.name
    c.instances.reservations.reserve(name, instance_id, "it exists on this node already", moving_in=True)
    staging = c.instances.storage.root / f"{RESTORE_PREFIX}{name}-migrate-{unique_suffix()}"
    try:
        staging.mkdir(mode=0o700)
        if any(f.startswith("tpm/") for f in files):
            (staging / "tpm").mkdir(mode=0o700)
        for file, size in files.items() if live else ():   # empty: QEMU's mirror fills them
            datadisks.make(staging / file, size)
    except OSError as exc:
        c.instances.release(name, instance_id)
        shutil.rmtree(staging, ignore_errors=True)
        raise Conflict(f"could not make {staging}: {exc.strerror}") from None
    inc = VmIncoming(secrets.token_hex(16), source, name, instance_id, project, plan, nics, staging, files,
                     vm_files.Budget(data), texts, created_at, live=live, got=set(files) if live else set())
    INCOMING[inc.id] = inc
    _background(_watch(c, inc))
    log.info("VM migration %s of %s from node %s: begun (%d files)", inc.id, name, source, len(files))
    return inc


def _background(work: Any) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _watch(c: ApiContext, inc: VmIncoming) -> None:
    """A source silent for IDLE_LIMIT between requests: its migration is aborted here (or kept,
    if etcd already names this node the owner)."""
    while INCOMING.get(inc.id) is inc:
        await asyncio.sleep(IDLE_CHECK)
        if INCOMING.get(inc.id) is inc and not inc.busy and time.monotonic() - inc.touched > IDLE_LIMIT:
            if inc.rec is not None and await _ours(c, inc.name):
                done(inc)
                return
            log.warning("VM migration %s of %s: no word from node %s for %d s; aborting it", inc.id, inc.name,
                        inc.source, IDLE_LIMIT)
            await abort(c, inc)


async def _ours(c: ApiContext, name: str) -> bool:
    """Whether etcd names this node the VM's owner (the source's switch happened)."""
    if c.cluster is None:
        return False
    try:
        kv = await c.cluster.etcd.get(keys.instance(name))
    except CtdError:
        return True   # cannot tell: keep it (destroying what may be the only copy is worse)
    return kv is not None and kv.json().get("node") == c.cluster.name


def file_target(inc: VmIncoming, name: str) -> tuple[Path, int]:
    """Where an announced, not yet received file goes, and its size."""
    size = inc.files.get(name)
    if size is None or name in inc.got:
        raise InvalidRequest(f"VM migration {inc.id}: {name[:60]!r} is not announced, or was received already")
    inc.got.add(name)
    return inc.staging / name, size


async def finish(c: ApiContext, inc: VmIncoming) -> dict[str, Any]:
    """The VM made here, stopped, from the received files."""
    missing = sorted(set(inc.files) - inc.got)
    if missing:
        raise Conflict(f"VM migration {inc.id}: not received yet: {', '.join(missing)}")
    instances, p = c.instances, inc.plan.base
    storage = instances.storage
    with instances.new_instance(inc.name, inc.instance_id, inc.project) as new:
        rec = InstanceRecord(
            id=inc.instance_id, name=inc.name, type=InstanceType.VM, template=p.template, hostname=p.hostname,
            privileged=False, idmap_base=None, limits=p.limits,
            created_at=inc.created_at, init=[], stop_signal="ACPI",
            options=replace(p.options, vm=inc.plan.vm), description=p.description, tags=p.tags)
        await asyncio.to_thread(instances.network.prepare, inc.nics)
        target = storage.instance_path(inc.name)
        if target.exists():
            raise Conflict(f"{target} exists already on this node")
        new.storage_made()
        await asyncio.to_thread(os.rename, inc.staging, target)
        new.mark_creating()
        new.add_record(rec, inc.nics)
        for kind, text in inc.texts.items():
            await asyncio.to_thread(userdata.save, target, kind, text)
        await asyncio.to_thread(c.transfers.vms.kind._vms.write_seed, rec)
        new.commit()
    inc.rec = rec
    instances.emit(rec, Lifecycle.CREATED, via="migrate", source=inc.source)
    return instances.brief(instances.get(rec.id))


async def abort(c: ApiContext, inc: VmIncoming) -> None:
    """Everything this migration made here goes (the VM too, after a finish)."""
    INCOMING.pop(inc.id, None)
    if inc.rec is not None:
        with contextlib.suppress(NotFound):
            await c.instances.destroy(c.instances.get(inc.rec.id), force=True)
    else:
        c.instances.release(inc.name, inc.instance_id)
    try:
        await asyncio.to_thread(shutil.rmtree, inc.staging, False)
    except FileNotFoundError:
        pass
    except (CtdError, OSError) as exc:
        log.error("VM migration %s: %s stays until ctd's next start removes it (%s)", inc.id, inc.staging, exc)
    log.info("VM migration %s of %s from node %s: aborted, nothing kept", inc.id, inc.name, inc.source)


def abort_soon(c: ApiContext, inc: VmIncoming) -> None:
    INCOMING.pop(inc.id, None)
    _background(abort(c, inc))


def done(inc: VmIncoming) -> None:
    INCOMING.pop(inc.id, None)
    log.info("VM migration %s of %s from node %s: done", inc.id, inc.name, inc.source)
