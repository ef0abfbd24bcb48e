"""The QEMU layer for virtual machines: spec -> argv -> daemonised QEMU, driven through QMP.

    spec.py     VmSpec (+ Disk, Nic, Firmware), validate(), pick_accel()
    argv.py     build_argv(spec): one builder per profile (linux, windows)
    process.py  start/stop QEMU (and swtpm for the TPM) in the VM's cgroup; find_qemu after a restart
    qmp.py      Qmp: status, powerdown, quit, cont, queries, events (qemu.qmp underneath)
    seed.py     cloud-init NoCloud seed ISO
    kernel.py   extract_vmlinux: the ELF inside a bzImage, for fast direct kernel boot
    resize.py   vCPU hotplug and balloon moves on a running VM (set --cpus/--ram)
    rootdisk.py a bootable ext4 disk from a template; mounting it to write the guest's settings
    driver.py   VmDriver: the manager's face (spec from the state, start/stop/adopt, seed, resize)
"""

from ctd.instance.vm.argv import build_argv
from ctd.instance.vm.spec import Disk, Firmware, Nic, VmSpec, pick_accel

__all__ = ["Disk", "Firmware", "Nic", "VmSpec", "build_argv", "pick_accel"]
