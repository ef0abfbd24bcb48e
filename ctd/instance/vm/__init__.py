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
    disks.py    growing the root disk (set --disk), live through QMP block_resize
    datadisks.py extra disks (disk add/remove), hot-plugged through QMP on machine pc
    media.py    the removable CD-ROM (media insert/eject, --boot) and the ISO path rules
    firmware.py BIOS or UEFI, secure boot, TPM per VM (create --firmware uefi --secure-boot --tpm)
    userdata.py the admin's cloud-init user-data/vendor-data on the seed, merged after ctd's
"""

from ctd.instance.vm.argv import build_argv
from ctd.instance.vm.spec import Disk, Firmware, Nic, VmSpec, pick_accel

__all__ = ["Disk", "Firmware", "Nic", "VmSpec", "build_argv", "pick_accel"]
