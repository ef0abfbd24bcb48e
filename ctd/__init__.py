"""ctd: OpenVZ-style system containers and QEMU/KVM virtual machines."""

__version__ = "0.1.0"
