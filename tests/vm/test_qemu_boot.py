"""The QEMU layer against real QEMU under TCG (no KVM needed): boot Debian's kernel with a
busybox initramfs, drive it over QMP, power it off through ACPI; the Windows profile's devices
(OVMF pflash, swtpm TPM, CD-ROMs, virtio) seen paused; failures at start carry QEMU's words.

Needs qemu-system-x86, qemu-utils, ovmf, swtpm, genisoimage, busybox-static and
linux-image-amd64; root for the cgroup and tap parts. Each test stays well under a minute.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.errors import NotFound, OperationFailed
from ctd.instance.vm import process, resize
from ctd.instance.vm.kernel import extract_vmlinux
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.spec import MiB, Disk, Nic, VmSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BOOT_MARK = "CTD-VM-BOOTED"
POWER_MARK = "CTD-VM-POWERBUTTON"
MODULES = ("kernel/drivers/input/evdev.ko", "kernel/drivers/acpi/button.ko",
           # the balloon, for live RAM changes (insmod order: dependencies first)
           *(f"kernel/drivers/virtio/{m}.ko" for m in ("virtio_ring", "virtio", "virtio_pci_legacy_dev",
                                                       "virtio_pci_modern_dev", "virtio_pci", "virtio_balloon")))
SIZES_MARK = "CTD-VM-SIZES"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"missing {', '.join(missing)} (./setup.sh test installs them)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def _kernel() -> Path:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    kernels = [k for k in kernels if Path("/lib/modules", k.name.removeprefix("vmlinuz-")).is_dir()]
    if not kernels:
        _need("linux-image-amd64 in /boot")
    return kernels[-1]


# --- a tiny initramfs ------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One 'newc' cpio record (the format the kernel unpacks)."""
    nameb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0]
    head = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
    return head + nameb + pad(len(head) + len(nameb)) + data + pad(len(data))


INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# The ACPI power button reaches userspace as an input event: button + evdev, then acpid.
insmod /lib/evdev.ko; insmod /lib/button.ko
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon; do
  insmod /lib/$m.ko
done
acpid -c /etc/acpi -l /tmp/acpid.log
echo {BOOT_MARK} uptime=$(cut -d' ' -f1 /proc/uptime)
# What the guest sees, for the live resize test; hot-added vCPUs are brought online the way
# distributions' udev rules do it.
while true; do
  for c in /sys/devices/system/cpu/cpu*/online; do [ "$(cat $c)" = 0 ] && echo 1 > $c; done
  echo "{SIZES_MARK} online=$(cat /sys/devices/system/cpu/online) $(grep MemTotal /proc/meminfo | tr -s ' ')"
  sleep 1
done
"""
POWER_ACTION = f"""#!/bin/sh
echo {POWER_MARK} > /dev/console
poweroff -f
"""


def build_initramfs(dest: Path, kernel: Path) -> Path:
    modules = Path("/lib/modules", kernel.name.removeprefix("vmlinuz-"))
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in
        ("bin", "sbin", "lib", "proc", "sys", "dev", "tmp", "etc", "etc/acpi", "etc/acpi/PWRF")]
    entries += [("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
                ("init", stat.S_IFREG | 0o755, INIT.encode()),
                # busybox acpid runs CONFDIR/PWRF/00000080 for the power button
                ("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, POWER_ACTION.encode())]
    entries += [(f"lib/{Path(m).name}", stat.S_IFREG | 0o644, (modules / m).read_bytes()) for m in MODULES]
    blob = b"".join(_cpio_entry(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    dest.write_bytes(blob + _cpio_entry("TRAILER!!!", 0))
    return dest


@pytest.fixture(scope="module")
def boot_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    _need("qemu-system-x86_64", "busybox")
    if not Path("/bin/busybox").exists():
        _need("/bin/busybox (busybox-static)")
    kernel = _kernel()
    for m in MODULES:
        if not Path("/lib/modules", kernel.name.removeprefix("vmlinuz-"), m).exists():
            _need(f"{m} of {kernel.name}")
    d = tmp_path_factory.mktemp("vmboot")
    vmlinux = extract_vmlinux(kernel, d / "cache")
    return vmlinux, build_initramfs(d / "initramfs.cpio", kernel)


# --- helpers ----------------------------------------------------------------------------------

class Cgroups:
    """A throwaway cgroup below our own in the memory and pids hierarchies (v1 here)."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        name = f"ctd-vmtest-{uuid.uuid4().hex[:8]}"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for ctl in ("memory", "pids"):
                base = Path("/sys/fs/cgroup", ctl)
                if ctl in controllers.split(",") and base.is_dir():
                    d = base / path.lstrip("/") / name
                    d.mkdir()
                    self.dirs.append(d)

    def procs(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def tasks(self) -> set[int]:
        return {int(t) for d in self.dirs[:1] for t in (d / "tasks").read_text().split()}

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):   # an exiting QEMU may still be listed for a moment
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.fixture
def cgroups() -> Iterator[Cgroups | None]:
    if os.geteuid() != 0:
        yield None
        return
    cg = Cgroups()
    try:
        yield cg
    finally:
        cg.remove()


def _ours(run_dir: Path) -> list[int]:
    """Every live process whose command line mentions run_dir (QEMU or swtpm of this test)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(run_dir).encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return [pid for pid in found if process._alive(pid)]


def _cleanup(spec: VmSpec) -> None:
    """By pid only: what this test started and may have left behind."""
    for pid in _ours(spec.run_dir):
        process._kill(pid)
    for p in spec.runtime_files():
        p.unlink(missing_ok=True)


async def _read_until(sock_path: Path, marker: str, timeout: float) -> tuple[str, float]:
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    buf = b""
    try:
        deadline = time.monotonic() + timeout
        while marker.encode() not in buf or b"\n" not in buf[buf.index(marker.encode()):]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} on the serial console within {timeout} s; got:\n"
                                     f"{buf.decode(errors='replace')[-2000:]}")
            chunk = await asyncio.wait_for(reader.read(4096), left)
            if not chunk:
                raise AssertionError(f"serial console closed before {marker!r}:\n{buf.decode(errors='replace')}")
            buf += chunk
        return buf.decode(errors="replace"), time.monotonic()
    finally:
        writer.close()


def _spec(tmp_path: Path, **kw: object) -> VmSpec:
    base: dict[str, object] = dict(name=f"t-{uuid.uuid4().hex[:6]}", uuid=str(uuid.uuid4()), ram=256 * MiB,
                                   cpus=1, run_dir=tmp_path / "run", accel="tcg")
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


# --- (a) a Linux guest: boot, console, QMP, ACPI power-off -----------------------------------

def test_linux_boots_to_serial_marker_and_powers_off_on_acpi(
        tmp_path: Path, boot_files: tuple[Path, Path], cgroups: Cgroups | None) -> None:
    vmlinux, initrd = boot_files
    spec = _spec(tmp_path, machine="pc", kernel=vmlinux, initrd=initrd,
                 append="console=ttyS0 quiet panic=-1 rdinit=/init")

    async def scenario() -> None:
        t0 = time.monotonic()
        pid = await process.start(spec, cgroups.procs() if cgroups else None)
        started = time.monotonic()
        console = asyncio.ensure_future(_read_until(spec.serial_socket, BOOT_MARK, 45))
        assert process.find_qemu(spec) == pid
        if cgroups:   # QEMU and every one of its threads sit in the VM's cgroup
            threads = {int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()}
            assert threads <= cgroups.tasks(), (threads, cgroups.tasks())
        async with Qmp(spec.qmp_socket) as q:
            assert await q.status() == "running"
            chardevs = {c["label"]: c["filename"] for c in await q.query_chardev()}
            assert str(spec.serial_socket) in chardevs["serial0"]
        text, t_mark = await console
        print(f"\nTCG boot: start() {started - t0:.2f} s, start -> marker {t_mark - t0:.2f} s; "
              f"guest says: {text[text.index(BOOT_MARK):].splitlines()[0]}")
        # The log gets the same bytes, written just after the socket's.
        for _ in range(50):
            if BOOT_MARK in spec.serial_log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        assert BOOT_MARK in spec.serial_log.read_text(errors="replace")

        # ctd restarts: nothing but the pidfile and the sockets to find the VM again.
        assert process.find_qemu(spec) == pid
        q2 = Qmp(spec.qmp_socket)
        await q2.connect()
        try:
            seen: list[dict] = []
            watcher = q2.watch(lambda ev: seen.append(ev))
            console = asyncio.ensure_future(_read_until(spec.serial_socket, POWER_MARK, 30))
            await asyncio.sleep(0.2)   # the console client is connected before the button
            t1 = time.monotonic()
            how = await process.stop(spec, pid, timeout=30, qmp=q2)
            print(f"ACPI power-off: {time.monotonic() - t1:.2f} s ({how})")
            assert how == "powerdown"
            await console
            await asyncio.wait_for(watcher, 5)   # ends by itself: QEMU closed the session
            names = [e["event"] for e in seen]
            assert "POWERDOWN" in names and "SHUTDOWN" in names, names
            shutdown = next(e for e in seen if e["event"] == "SHUTDOWN")
            assert shutdown["data"]["guest"] is True and shutdown["data"]["reason"] == "guest-shutdown"
        finally:
            await q2.close()
        assert not process._alive(pid)
        assert not any(p.exists() for p in spec.runtime_files())

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


async def _sizes(spec: VmSpec, want: str, timeout: float = 30) -> str:
    """The guest's next SIZES line containing want (it prints one a second)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        text, _ = await _read_until(spec.serial_socket, SIZES_MARK, deadline - time.monotonic())
        last = text[text.rindex(SIZES_MARK):].splitlines()[0]
        if want in last:
            return last
    raise AssertionError(f"the guest never showed {want!r}; last: {last}")


def test_live_vcpus_and_ram_as_the_guest_sees_them(
        tmp_path: Path, boot_files: tuple[Path, Path], cgroups: Cgroups | None) -> None:
    vmlinux, initrd = boot_files
    spec = _spec(tmp_path, machine="pc", kernel=vmlinux, initrd=initrd, cpus=1, max_cpus=2, ram=256 * MiB,
                 append="console=ttyS0 quiet panic=-1 rdinit=/init")

    async def scenario() -> None:
        await process.start(spec, cgroups.procs() if cgroups else None)
        await _read_until(spec.serial_socket, BOOT_MARK, 45)
        first = await _sizes(spec, "online=0 ")
        total = int(first.split("MemTotal: ")[1].split()[0])   # kB
        async with Qmp(spec.qmp_socket) as q:
            t0 = time.monotonic()
            r = await resize.set_vcpus(q, 2)
            assert r.live and r.value == 2 and await q.vcpu_count() == 2
            await _sizes(spec, "online=0-1 ")
            print(f"\nvCPU hot-add seen online in the guest after {time.monotonic() - t0:.1f} s")

            t0 = time.monotonic()
            r = await resize.set_ram(q, 256 * MiB, 160 * MiB)
            assert r.live and r.value == 160 * MiB, r
            line = await _sizes(spec, "MemTotal")
            assert int(line.split("MemTotal: ")[1].split()[0]) <= total - 90 * 1024, (first, line)
            print(f"balloon 256 -> 160 MiB in {time.monotonic() - t0:.1f} s: {line}")
            r = await resize.set_ram(q, 256 * MiB, 512 * MiB)   # back up, but not past the boot size
            assert not r.live and r.value == 256 * MiB and "next start" in (r.note or "")

            r = await resize.set_vcpus(q, 3)
            assert not r.live and r.value == 2 and "room for 2" in (r.note or "")
            t0 = time.monotonic()
            r = await resize.set_vcpus(q, 1)
            assert r.live and r.value == 1 and await q.vcpu_count() == 1, r
            await _sizes(spec, "online=0 ")
            print(f"vCPU ejected by the guest in {time.monotonic() - t0:.1f} s")

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


def test_hard_stop_when_the_guest_ignores_the_power_button(
        tmp_path: Path, boot_files: tuple[Path, Path]) -> None:
    vmlinux, initrd = boot_files
    # No kernel ACPI (acpi=off): the button goes nowhere, so stop() must fall back to quit.
    spec = _spec(tmp_path, machine="pc", kernel=vmlinux, initrd=initrd,
                 append="console=ttyS0 quiet panic=-1 rdinit=/init acpi=off")

    async def scenario() -> None:
        pid = await process.start(spec)
        await _read_until(spec.serial_socket, BOOT_MARK, 45)
        t1 = time.monotonic()
        how = await process.stop(spec, pid, timeout=2)
        assert how == "quit" and time.monotonic() - t1 < 10
        assert not process._alive(pid)

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


# --- (b) the Windows profile, seen paused ------------------------------------------------------

def _iso(path: Path, label: str) -> Path:
    src = path.with_suffix(".d")
    src.mkdir()
    (src / "README.TXT").write_text(f"{label}\n")
    subprocess.run(["genisoimage", "-quiet", "-o", str(path), "-V", label, "-J", "-r", str(src)], check=True)
    return path


@pytest.fixture
def tap() -> Iterator[str | None]:
    """A tap of our own, never up and on no bridge: QEMU can attach, no packet goes anywhere."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    name = f"ctdt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_windows_profile_devices_paused(tmp_path: Path, tap: str | None, cgroups: Cgroups | None) -> None:
    _need("qemu-system-x86_64", "qemu-img", "swtpm", "genisoimage")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd").exists():
        _need("ovmf (/usr/share/OVMF/OVMF_CODE_4M.ms.fd)")
    disk = tmp_path / "c.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8G"], check=True)
    install, drivers = _iso(tmp_path / "win.iso", "WININSTALL"), _iso(tmp_path / "virtio-win.iso", "VIRTIOWIN")
    mac = "52:54:00:12:34:56"
    spec = _spec(tmp_path, profile="windows", ram=1024 * MiB, cpus=2, paused=True,
                 disks=[Disk(disk, "qcow2")], cdroms=[install], drivers_iso=drivers,
                 nics=[Nic(tap, mac)] if tap else [], nvram=tmp_path / "state" / "OVMF_VARS.fd",
                 tpm_state_dir=tmp_path / "state" / "tpm")

    async def scenario() -> None:
        pid = await process.start(spec, cgroups.procs() if cgroups else None)
        swtpm = process.find_swtpm(spec)
        assert swtpm is not None and process._alive(swtpm)
        if cgroups:
            assert {pid, swtpm} <= cgroups.tasks()
        assert spec.nvram_path.stat().st_size == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").stat().st_size
        async with Qmp(spec.qmp_socket) as q:
            assert await q.status() == "prelaunch"
            tpms = await q.query_tpm()
            assert [(t["model"], t["options"]["type"]) for t in tpms] == [("tpm-crb", "emulator")]
            blocks = {b.get("qdev") or b["device"]: b for b in await q.query_block()}
            flash = {k: b["inserted"] for k, b in blocks.items() if "system.flash" in k}
            assert {f["node-name"]: (f["file"], f["ro"]) for f in flash.values()} == {
                "ovmf-code": ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", True),
                "ovmf-vars": (str(spec.nvram_path), False)}
            files = {b["device"]: b["inserted"]["file"] for b in blocks.values() if b.get("device")}
            assert files == {"drive-disk0": str(disk), "drive-cd0": str(install), "drive-cd1": str(drivers)}
            assert blocks["cd0"]["removable"] and blocks["cd1"]["removable"]
            pci = {d["qdev_id"]: d for d in await q.query_pci() if d["qdev_id"]}
            assert (pci["disk0"]["id"]["vendor"], pci["disk0"]["id"]["device"]) == (0x1AF4, 0x1001)  # virtio-blk
            assert "xhci" in pci and "video0" in pci
            if tap:
                assert (pci["nic0"]["id"]["vendor"], pci["nic0"]["id"]["device"]) == (0x1AF4, 0x1000)  # virtio-net
                mac_prop = await q.execute("qom-get", {"path": "/machine/peripheral/nic0", "property": "mac"})
                assert mac_prop == mac
            assert (await q.query_vnc())["enabled"]
            peripherals = {p["name"] for p in await q.execute("qom-list", {"path": "/machine/peripheral"})}
            assert {"tablet0", "xhci", "cd0", "cd1", "disk0", "video0"} <= peripherals
            cpu = await q.execute("qom-get", {"path": "/machine/unattached/device[0]", "property": "hv-relaxed"})
            assert cpu is True
        how = await process.stop(spec, pid, timeout=5)
        assert how == "quit"   # never ran: nothing to ask, QEMU is told to quit
        assert not process._alive(pid)
        assert process.find_swtpm(spec) is None and not process._alive(swtpm)
        assert not spec.swtpm_socket.exists()
        assert any(spec.tpm_dir.iterdir()), "swtpm keeps its state for the next start"

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


def test_windows_firmware_runs_with_secure_boot_enforced(tmp_path: Path) -> None:
    """OVMF (SMM build, Microsoft keys enrolled) really runs under TCG: it finds the install
    CD-ROM on the AHCI port, and refuses to start its own unsigned shell."""
    _need("qemu-system-x86_64", "swtpm", "genisoimage")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd").exists():
        _need("ovmf (/usr/share/OVMF/OVMF_CODE_4M.ms.fd)")
    install = _iso(tmp_path / "win.iso", "WININSTALL")   # not bootable: the firmware moves on
    spec = _spec(tmp_path, profile="windows", ram=512 * MiB, cdroms=[install],
                 nvram=tmp_path / "vars.fd", tpm_state_dir=tmp_path / "tpm")
    template = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").read_bytes()

    async def scenario() -> None:
        t0 = time.monotonic()
        pid = await process.start(spec)
        log = ""
        while "Security Violation" not in log:
            assert time.monotonic() - t0 < 60, f"OVMF said nothing conclusive in 60 s:\n{log}"
            await asyncio.sleep(0.5)
            log = spec.serial_log.read_text(errors="replace")
        print(f"\nOVMF under TCG: secure boot verdict after {time.monotonic() - t0:.1f} s")
        assert "UEFI QEMU DVD-ROM" in log
        assert await process.stop(spec, pid, timeout=1) in ("quit", "powerdown")
        assert spec.nvram_path.read_bytes() != template   # the firmware wrote its own copy only

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


def test_microvm_starts_with_mmio_devices(tmp_path: Path, boot_files: tuple[Path, Path]) -> None:
    vmlinux, initrd = boot_files
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * MiB)
    spec = _spec(tmp_path, machine="microvm", kernel=vmlinux, initrd=initrd, paused=True,
                 disks=[Disk(disk, cache="writeback")], append="console=ttyS0")

    async def scenario() -> None:
        pid = await process.start(spec)
        async with Qmp(spec.qmp_socket) as q:
            assert await q.status() == "prelaunch"
            blocks = {b["device"]: b for b in await q.query_block()}
            assert blocks["drive-disk0"]["inserted"]["file"] == str(disk)
        assert await process.stop(spec, pid, timeout=5) == "quit"

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)


def test_odd_paths_reach_qemu_intact(tmp_path: Path) -> None:
    """Commas (doubled in QEMU's option syntax), spaces and quotes in every path QEMU sees."""
    _need("qemu-system-x86_64")
    odd = tmp_path / "a, 'b' \"c\""
    odd.mkdir()
    disk = odd / "d,1 x.raw"
    disk.write_bytes(b"\0" * MiB)
    iso = odd / "e,f.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    spec = _spec(tmp_path, machine="pc", paused=True, run_dir=odd / "r,1",
                 disks=[Disk(disk, cache="writeback")], cdroms=[iso])

    async def scenario() -> None:
        pid = await process.start(spec)
        assert spec.qmp_socket.exists() and spec.vnc_socket.exists() and spec.serial_socket.exists()
        async with Qmp(spec.qmp_socket) as q:
            files = {b["device"]: b["inserted"]["file"] for b in await q.query_block()}
            assert files == {"drive-disk0": str(disk), "drive-cd0": str(iso)}
        assert await process.stop(spec, pid, timeout=5) == "quit"

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
    assert _ours(spec.run_dir) == []


# --- (c) QEMU refusing to start ----------------------------------------------------------------

def _assert_nothing_left(spec: VmSpec) -> None:
    assert _ours(spec.run_dir) == []
    assert process.find_qemu(spec) is None and process.find_swtpm(spec) is None
    assert not any(p.exists() for p in spec.runtime_files())


def test_bad_disk_image_fails_with_qemus_message(tmp_path: Path) -> None:
    _need("qemu-system-x86_64", "swtpm")
    bogus = tmp_path / "not-a.qcow2"
    bogus.write_bytes(b"this is no qcow2 image\n" * 100)
    # The Windows profile: swtpm is started first and must be stopped again.
    spec = _spec(tmp_path, profile="windows", disks=[Disk(bogus, "qcow2")],
                 nvram=tmp_path / "vars.fd", tpm_state_dir=tmp_path / "tpm", paused=True)
    try:
        with pytest.raises(OperationFailed) as e:
            asyncio.run(process.start(spec))
        assert "qcow2" in e.value.message and str(bogus) in e.value.message, e.value.message
        assert spec.name in e.value.message
        _assert_nothing_left(spec)
    finally:
        _cleanup(spec)


def test_not_a_kernel_fails_with_qemus_message(tmp_path: Path) -> None:
    _need("qemu-system-x86_64")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fELF but not really" + b"\0" * 4096)
    spec = _spec(tmp_path, machine="pc", kernel=kernel)
    try:
        with pytest.raises(OperationFailed) as e:
            asyncio.run(process.start(spec))
        assert "qemu-system-x86_64" in e.value.message or "kernel" in e.value.message.lower(), e.value.message
        _assert_nothing_left(spec)
    finally:
        _cleanup(spec)


def test_bad_option_and_missing_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need("qemu-system-x86_64")
    spec = _spec(tmp_path, machine="pc", paused=True)
    real = process.build_argv
    monkeypatch.setattr(process, "build_argv", lambda s: [*real(s), "-no-such-option"])
    try:
        with pytest.raises(OperationFailed) as e:
            asyncio.run(process.start(spec))
        assert "-no-such-option: invalid option" in e.value.message, e.value.message
        _assert_nothing_left(spec)

        monkeypatch.setattr(process, "build_argv", lambda s: ["/nonexistent/qemu-system-x86_64", *real(s)[1:]])
        with pytest.raises(OperationFailed) as e:
            asyncio.run(process.start(spec))
        assert "/nonexistent/qemu-system-x86_64" in e.value.message, e.value.message
        _assert_nothing_left(spec)
    finally:
        _cleanup(spec)


def test_missing_kernel_is_refused_before_qemu_runs(tmp_path: Path) -> None:
    _need("qemu-system-x86_64")
    spec = _spec(tmp_path, machine="pc", kernel=tmp_path / "nope", append="console=ttyS0")
    with pytest.raises(NotFound, match="kernel .*nope does not exist"):
        asyncio.run(process.start(spec))
    assert not spec.run_dir.exists()


def test_second_start_is_a_conflict(tmp_path: Path) -> None:
    _need("qemu-system-x86_64")
    from ctd.errors import Conflict

    spec = _spec(tmp_path, machine="pc", paused=True)

    async def scenario() -> None:
        pid = await process.start(spec)
        try:
            with pytest.raises(Conflict):
                await process.start(spec)
            assert process.find_qemu(spec) == pid   # the running one was left alone
        finally:
            assert await process.stop(spec, pid, timeout=5) == "quit"

    try:
        asyncio.run(scenario())
    finally:
        _cleanup(spec)
