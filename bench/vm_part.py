"""(vm) A minimal Linux VM: time from the start request until the guest's userspace writes on
its serial console, through ctd and by hand with the very argv ctd gave QEMU; host memory per
idle VM (PSS and RSS of its QEMU).

The VM is ctd's `--type vm --template busybox`: Debian's kernel booted directly (no
bootloader; ctd gives QEMU the vmlinux inside the bzImage, PVH entry) with Debian's initrd,
root on a virtio disk holding the busybox template, whose /etc/init.d/rcS prints
"<hostname>: booted by ctd" on the console. Under TCG (no usable KVM here) the emulated CPU
unpacking the initrd and probing a PC's devices is most of a boot, so a third row boots the
same kernel, initrd and disk by hand on the leanest machine QEMU offers: microvm, with TSC
hints on the command line (without them microvm hangs about half the time here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import BenchError, rss_pss, summary
from ctd_side import CtdDaemon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ctd.instance.vm.kernel import extract_vmlinux  # noqa: E402
from ctd.instance.vm.rootdisk import host_kernel  # noqa: E402
from ctd.instance.vm.spec import Disk, MiB, VmSpec, pick_accel  # noqa: E402
from ctd.instance.vm.argv import build_argv  # noqa: E402

MARK = b"booted by ctd"
BOOT_TIMEOUT = 180.0
RAM = "256M"


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def wait_mark(log: Path, t0: float, timeout: float = BOOT_TIMEOUT) -> float:
    """ms from t0 until the serial log holds the guest's userspace line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if MARK in log.read_bytes():
                return _ms(t0)
        time.sleep(0.02)
    raise BenchError(f"no {MARK.decode()!r} in {log} within {timeout:.0f} s")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        fd = os.pidfd_open(pid)
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


class VmBench:
    def __init__(self, ctd: CtdDaemon, scratch: Path, log) -> None:  # type: ignore[no-untyped-def]
        self.ctd, self.log = ctd, log
        self.hand = scratch / "vm-by-hand"
        self.hand.mkdir(mode=0o700, exist_ok=True)
        self.pids: set[int] = set()   # QEMUs started by hand (killed by cleanup if still there)

    def create(self, name: str) -> None:
        self.ctd.created.add(name)
        self.ctd.client.run("POST", "/1.0/instances", {"name": name, "type": "vm", "template": "busybox",
                                                       "limits": {"ram": RAM, "cpus": 1}, "vm": {"disk": "256M"}})

    def _serial_log(self, name: str) -> Path:
        """ctd's console log of the VM (ctd reads the serial socket into it all along)."""
        return self.ctd.state_dir / "consoles" / f"{self.ctd.instance(name)['id']}.log"

    def ctd_boot(self, name: str) -> dict:
        """start (API, operation waited) -> userspace; the argv QEMU ran with, for by hand."""
        t0 = time.perf_counter()
        self.ctd.start_ct(name)
        api = _ms(t0)
        user = wait_mark(self._serial_log(name), t0)
        inst = self.ctd.instance(name)
        argv = [a.decode() for a in Path(f"/proc/{inst['pid']}/cmdline").read_bytes().split(b"\0")[:-1]]
        self.ctd.stop_ct(name)
        return {"api_ms": api, "userspace_ms": user, "argv": argv,
                "run_dir": str(Path(inst["vm"]["serial_socket"]).parent)}

    def _run_by_hand(self, argv: list[str], log: Path, pidfile: Path) -> float:
        for p in self.hand.iterdir():
            if p.is_socket() or p.name in (log.name, pidfile.name):
                p.unlink()
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:   # -daemonize: the parent returns once QEMU is set up
            raise BenchError(f"QEMU by hand failed: {r.stderr.strip()}")
        pid = int(pidfile.read_text())
        self.pids.add(pid)
        try:
            return wait_mark(log, t0)
        finally:
            _kill(pid)
            self.pids.discard(pid)

    def hand_boot(self, argv: list[str], run_dir: str) -> float:
        """ctd's argv, its run directory swapped for one of ours: same kernel, initrd, disk, devices."""
        mine = [a.replace(run_dir, str(self.hand)) for a in argv]
        # no ctd reads the serial socket here: QEMU's own logfile is what we watch
        mine = [a + f",logfile={self.hand / 'serial.log'}" if a.startswith("socket,id=serial0,") else a
                for a in mine]
        return self._run_by_hand(mine, self.hand / "serial.log", self.hand / "qemu.pid")

    def microvm_argv(self, name: str) -> list[str]:
        """The same disk and initrd on microvm with the uncompressed kernel and TSC hints."""
        disk = self.ctd.state_dir / "storage" / "instances" / name / "disk.raw"
        kernel = host_kernel()   # what ctd's VM boots
        vmlinux = extract_vmlinux(kernel.vmlinuz, self.hand / "kernel-cache")
        khz = tsc_khz()
        append = (f"root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 tsc_early_khz={khz} "
                  f"lpj={khz * 4} tsc=reliable")   # lpj at HZ=250 (Debian)
        spec = VmSpec(name=f"{name}-micro", uuid=str(uuid.uuid4()),
                      ram=int(RAM[:-1]) * MiB, cpus=1, run_dir=self.hand, accel=pick_accel()[0],
                      machine="microvm", kernel=vmlinux, initrd=kernel.initrd, append=append,
                      disks=[Disk(disk, cache="none")], vnc=False, balloon=False)
        return build_argv(spec)

    def micro_boot(self, argv: list[str]) -> float:
        return self._run_by_hand(argv, self.hand / "serial.log", self.hand / "qemu.pid")

    def cleanup(self) -> None:
        for pid in list(self.pids):
            _kill(pid)


def tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


def bench_boot(vb: VmBench, boots: int, log) -> dict:  # type: ignore[no-untyped-def]
    """One untimed boot each to warm the page cache, then boots rounds, ctd and by hand
    interleaved (order swapped every round)."""
    name = "bench-vm"
    vb.create(name)
    first = vb.ctd_boot(name)
    argv, run_dir = first["argv"], first["run_dir"]
    vb.hand_boot(argv, run_dir)
    micro_argv = vb.microvm_argv(name)
    out: dict = {"ctd_api": [], "ctd": [], "hand": [], "microvm": [], "argv": argv, "microvm_argv": micro_argv,
                 "first_ctd_ms": first["userspace_ms"]}
    micro_error = None
    for i in range(boots):
        order = ("ctd", "hand") if i % 2 == 0 else ("hand", "ctd")
        for tool in order:
            if tool == "ctd":
                r = vb.ctd_boot(name)
                out["ctd"].append(r["userspace_ms"])
                out["ctd_api"].append(r["api_ms"])
            else:
                out["hand"].append(vb.hand_boot(argv, run_dir))
        if micro_error is None:
            try:
                out["microvm"].append(vb.micro_boot(micro_argv))
            except BenchError as exc:
                micro_error = str(exc)
        log(f"  round {i + 1}: ctd {out['ctd'][-1] / 1000:.2f} s, by hand {out['hand'][-1] / 1000:.2f} s"
            + (f", microvm {out['microvm'][-1] / 1000:.2f} s" if out["microvm"] and micro_error is None else ""))
    vb.ctd.destroy(name)
    res = {k: summary(out[k]) for k in ("ctd_api", "ctd", "hand", "microvm") if out[k]}
    res.update({"samples": {k: out[k] for k in ("ctd_api", "ctd", "hand", "microvm")},
                "argv": argv, "microvm_argv": micro_argv, "first_ctd_ms": out["first_ctd_ms"]})
    if micro_error:
        res["microvm_error"] = micro_error
    return res


def bench_memory(vb: VmBench, count: int, settle: float, log) -> dict:  # type: ignore[no-untyped-def]
    """count idle VMs booted to userspace: PSS and RSS of each QEMU."""
    names = [f"bench-vmmem-{i}" for i in range(count)]
    for n in names:
        vb.create(n)
    try:
        for n in names:
            t0 = time.perf_counter()
            vb.ctd.start_ct(n)
            wait_mark(vb._serial_log(n), t0)
        time.sleep(settle)
        per = [rss_pss([vb.ctd.instance(n)["pid"]]) for n in names]
    finally:
        for n in names:
            with contextlib.suppress(Exception):
                vb.ctd.destroy(n)
    log(f"  {count} idle VMs: PSS {statistics.mean(p['pss'] for p in per) / 1024:.0f} MiB each")
    return {"count": count, "guest_ram": RAM, "pss_kb": statistics.mean(p["pss"] for p in per),
            "rss_kb": statistics.mean(p["rss"] for p in per), "per_vm": per}


def host_note() -> str:
    accel, reason = pick_accel()
    return f"{accel} on {os.uname().nodename} ({os.uname().release}): {reason}"


def report(res: dict, verdicts: list[str]) -> list[str]:
    lines = ["", f"(vm) minimal Linux VM, start -> guest userspace on the serial console "
             f"({res.get('accel', '?')}; {RAM} RAM, 1 vCPU)"]
    boot = res.get("boot", {})
    rows = (("ctd: start request answered", "ctd_api"), ("ctd: start -> userspace", "ctd"),
            ("QEMU by hand, same argv", "hand"), ("QEMU by hand, microvm + vmlinux + TSC hints", "microvm"))
    for label, key in rows:
        if key in boot:
            s = boot[key]
            lines.append(f"  {label:<46} median {s['median'] / 1000:6.2f} s  (mean {s['mean'] / 1000:.2f}, "
                         f"n={s['n']})")
    if boot.get("microvm_error"):
        lines.append(f"  microvm by hand: {boot['microvm_error']}")
    if "ctd" in boot and "hand" in boot:
        lines.append(f"  ctd's own share: {(boot['ctd']['median'] - boot['hand']['median']) / 1000:+.2f} s")
    mem = res.get("memory")
    if mem:
        lines.append(f"  host memory per idle VM ({mem['count']} running, guest RAM {mem['guest_ram']}): "
                     f"PSS {mem['pss_kb'] / 1024:.0f} MiB, RSS {mem['rss_kb'] / 1024:.0f} MiB")
    lines.append(f"  KVM: {res.get('kvm_note', '?')}")
    if "ctd" in boot:
        verdicts.append(f"VM boot to userspace {boot['ctd']['median'] / 1000:.2f} s under "
                        f"{res.get('accel')}: the KVM target (< 300 ms to init) cannot be measured here")
    return lines


def which_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        raise BenchError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
