"""User namespace limits and the host's subordinate id ranges (/etc/subuid, /etc/subgid)."""

from __future__ import annotations

from pathlib import Path

from .model import CheckResult, bad, ok, warn

CATEGORY = "userns"
MAX_USERNS = Path("/proc/sys/user/max_user_namespaces")
# Informational sysctls: they restrict unprivileged users, not root (ctd runs as root).
# name -> (path, the value that means "restricted", what that restriction is)
INFO_SYSCTLS: dict[str, tuple[Path, int, str]] = {
    "unprivileged_userns_clone": (Path("/proc/sys/kernel/unprivileged_userns_clone"), 0,
                                  "unprivileged users may not create user namespaces"),
    "apparmor_restrict_unprivileged_userns": (
        Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"), 1,
        "AppArmor restricts unprivileged user namespaces"),
}


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def _read_int(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


def check_userns_limits(max_path: Path = MAX_USERNS,
                        info: dict[str, tuple[Path, int, str]] | None = None,
                        inotify_path: Path | None = None) -> list[CheckResult]:
    results = []
    n = _read_int(max_path)
    if n is None:
        results.append(bad("userns:max_user_namespaces", f"{max_path} unreadable: no user namespaces",
                           "rebuild the kernel with CONFIG_USER_NS=y", CATEGORY, True))
    elif n <= 0:
        results.append(bad("userns:max_user_namespaces", "0: no user namespace can be created",
                           "sysctl -w user.max_user_namespaces=15000 (and persist it in "
                           "/etc/sysctl.d/)", CATEGORY, True))
    else:
        results.append(ok("userns:max_user_namespaces", f"{n} (each container uses one)",
                          CATEGORY, True))
    # Every container's user namespace is made by host root, so all their systemds share
    # root's inotify instances: about 8 each, and the default 128 stops the 17th Debian boot.
    if inotify_path is None and info is None:
        inotify_path = INOTIFY_INSTANCES
    inotify = _read_int(inotify_path) if inotify_path is not None else None
    if inotify is not None:
        if inotify < 4096:
            results.append(warn("sysctl:inotify_instances", f"fs.inotify.max_user_instances={inotify}: about "
                                f"{inotify // 8} systemd containers can boot",
                                "sysctl -w fs.inotify.max_user_instances=8192 (persist it in /etc/sysctl.d/)",
                                CATEGORY))
        else:
            results.append(ok("sysctl:inotify_instances", f"fs.inotify.max_user_instances={inotify}", CATEGORY))
    for name, (path, restricted, meaning) in (INFO_SYSCTLS if info is None else info).items():
        v = _read_int(path)
        if v is None:
            continue  # sysctl absent on this kernel
        state = meaning if v == restricted else "no restriction"
        results.append(ok(f"userns:{name}", f"{v}: {state}; informational, ctd runs as root",
                          CATEGORY))
    return results


def parse_subid(text: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(owner, start, count) entries and the malformed lines."""
    entries, bad_lines = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            entries.append((parts[0], int(parts[1]), int(parts[2])))
        else:
            bad_lines.append(line)
    return entries, bad_lines


def check_subid(path: Path) -> CheckResult:
    name = f"subid:{path.name}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ok(name, f"{path} absent: no host ranges to avoid", CATEGORY)
    except OSError as e:
        return warn(name, f"{path} unreadable ({e.strerror}): ctd cannot avoid its ranges",
                    f"make {path} readable by root", CATEGORY)
    entries, bad_lines = parse_subid(text)
    shown = ", ".join(f"{o}:{s}-{s + c - 1}" for o, s, c in entries[:6])
    more = f" (+{len(entries) - 6} more)" if len(entries) > 6 else ""
    summary = (f"{len(entries)} range(s): {shown}{more}" if entries else "empty")
    summary += "; ctd allocates container id ranges that overlap none of them"
    if bad_lines:
        return warn(name, f"{summary}; {len(bad_lines)} malformed line(s), e.g. {bad_lines[0]!r}",
                    f"fix or remove the malformed lines in {path} (format user:start:count)",
                    CATEGORY)
    return ok(name, summary, CATEGORY)


def check_subids(subuid: Path = Path("/etc/subuid"),
                 subgid: Path = Path("/etc/subgid")) -> list[CheckResult]:
    return [check_subid(subuid), check_subid(subgid)]
