"""A VM's firmware and TPM: `ctctl create --type vm --firmware uefi [--secure-boot] [--tpm]`,
for any profile (the windows profile is always UEFI with secure boot and a TPM 2.0).

UEFI is Debian's OVMF on machine q35 (secure boot needs SMM, which ctd enables on q35); the
VM's own copy of the variable store (OVMF_VARS.fd) and its TPM state (swtpm, TPM 2.0) live in
its directory, so they follow a clone. Secure boot uses the .ms variable template: Microsoft's
keys are enrolled, so a guest boots through a signed shim (Debian's, Ubuntu's, Windows).

A VM made from a template boots the host's kernel directly (no bootloader in its disk): OVMF
loads that kernel itself, which works without secure boot; with secure boot OVMF refuses it
(Debian's kernel is signed by Debian's key, which only shim trusts, and there is no shim on the
way), so that combination is refused at create: install from an ISO for secure boot.

The VM's options keep what create chose (VmOptions.firmware, secure_boot, tpm); settings() is
what the VM gets, the windows profile's fixed set included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctd import validate
from ctd.errors import InvalidRequest
from ctd.state.options import FirmwareType, VmOptions

FIELDS = ("firmware", "secure_boot", "tpm")


@dataclass(frozen=True)
class FirmwareSettings:
    uefi: bool = False
    secure_boot: bool = False
    tpm: bool = False

    def words(self) -> str:
        """What `hardware` says."""
        if not self.uefi:
            return "BIOS (SeaBIOS)"
        return f"UEFI (OVMF), secure boot {'on' if self.secure_boot else 'off'}"


WINDOWS = FirmwareSettings(uefi=True, secure_boot=True, tpm=True)


def check(raw: dict[str, Any], profile: str, template: bool) -> FirmwareSettings:
    """The create request's firmware fields (raw: its "vm" object), or a 400."""
    kind = raw.get("firmware")
    if kind is not None and kind not in ("bios", "uefi"):
        raise InvalidRequest(f"invalid firmware {str(kind)[:20]!r}: use bios or uefi")
    secure_boot, tpm = validate.boolean(raw, "secure_boot"), validate.boolean(raw, "tpm")
    if profile == "windows":
        if kind == "bios" or raw.get("secure_boot") is False or raw.get("tpm") is False:
            raise InvalidRequest("the windows profile is always UEFI with secure boot and a TPM 2.0 (Windows 11 "
                                 "needs them)")
        return WINDOWS
    if secure_boot and kind != "uefi":
        raise InvalidRequest("secure boot is a UEFI feature: give --firmware uefi with --secure-boot")
    if secure_boot and template:
        raise InvalidRequest("secure boot needs a signed boot chain on the disk (shim, then a signed kernel); a VM "
                             "made from a template boots the host's kernel directly, which OVMF refuses under "
                             "secure boot: install the VM from an ISO (--iso) for secure boot, or leave it off")
    return FirmwareSettings(kind == "uefi", secure_boot, tpm)


def settings(vm: VmOptions) -> FirmwareSettings:
    """What the VM gets: the windows profile's fixed set, or what create chose."""
    if vm.windows:
        return WINDOWS
    return FirmwareSettings(vm.firmware is FirmwareType.UEFI, vm.secure_boot, vm.tpm)
