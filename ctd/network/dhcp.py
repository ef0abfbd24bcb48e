"""DHCP and DNS on ctd's networks: one dnsmasq per network whose `dhcp` is on, run by ctd.

Contract:
- dnsmasq hands out only what ctd's address management allocated: a static host entry per
  bridged NIC on the network (its MAC and its first IPv4 address), `static` ranges, so an
  unknown MAC gets nothing (there is no second allocator). Its DNS answers every instance's
  name with its addresses on the network (instance names are validated: DNS labels).
- It listens on the network's bridge and only there (--bind-interfaces, --interface, the
  gateway addresses; never lo, never another interface), runs in the foreground as ctd's child,
  and is restarted by tick() when it exits; it stops with the network and with ctd.
- Its files (command line, hosts, DHCP hosts) are generated from validated state only; changes
  reach it through SIGHUP (dnsmasq rereads both hosts files) within a tick, or at once where
  ctd calls refresh() (before an instance starts, after NICs change).
- DHCP is IPv4 (DHCPv6 and router advertisements are not served); names resolve to IPv4 and
  IPv6 addresses. Other names are forwarded to the host's resolvers (/etc/resolv.conf), plain
  names and private reverse lookups not (--domain-needed, --bogus-priv).

How a tenant would abuse it: asking for another NIC's address with a forged client MAC in the
DHCP payload (the offer names an address the anti-spoofing filter still refuses it as a source:
it cannot use it); flooding DISCOVERs (answered for known MACs only, nothing allocated); a
hostname option carrying DNS records (dnsmasq's names come from ctd's files only:
--dhcp-ignore-names); DNS queries from another network (dnsmasq listens on its bridge only).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ctd.network import ipam
from ctd.state import NetworkRecord, NicMode, StateDB

log = logging.getLogger(__name__)

LEASE_TIME = "1h"
FILES_ROOT = Path("/run/ctd-dnsmasq")


def dnsmasq_path() -> str | None:
    return shutil.which("dnsmasq") or (
        "/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None)


@dataclass
class _Server:
    proc: subprocess.Popen[bytes]
    hosts: str       # the hosts files' content as last written
    restarts: int = 0


class DhcpServers:
    """The dnsmasq of every network with DHCP on."""

    def __init__(self, db: StateDB, run_dir: Path) -> None:
        self.db = db
        # dnsmasq rereads its files after dropping to its own user, so they live where every
        # user may pass (ctd's state dir may sit below a directory only root enters): one
        # directory per ctd (per its run_dir), one below it per network
        key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self.dir = FILES_ROOT / key
        self.servers: dict[str, _Server] = {}
        # tick() runs in a thread of its own beside network create/delete: one at a time, so a
        # dnsmasq stopped for a network being deleted is never started again
        self._lock = threading.RLock()

    # ------------------------------------------------------------- files

    def _files(self, net: NetworkRecord) -> tuple[str, str]:
        """(addn-hosts, dhcp-hostsfile) for net, from the state (one query: it runs every tick)."""
        rows = self.db.conn.execute(
            "SELECT i.name, n.idx, n.mac, n.mode, n.vlan, a.address FROM nics n "
            "JOIN instances i ON i.id = n.instance_id "
            "LEFT JOIN addresses a ON a.instance_id = n.instance_id AND a.idx = n.idx "
            "WHERE n.network = ? ORDER BY i.name, n.idx, a.rowid", (net.name,)).fetchall()
        nics: dict[tuple[str, int], tuple[str, str, int | None, list[str]]] = {}
        for name, idx, mac, mode, vlan, address in rows:
            entry = nics.setdefault((name, idx), (mac, mode, vlan, []))
            if address is not None:
                entry[3].append(address)
        names, dhcp, named = [], [], set()
        for (name, _idx), (mac, mode, vlan, addresses) in nics.items():
            if name not in named:   # the name answers with the first NIC's addresses on this network
                named.add(name)
                names += [f"{a} {name}" for a in addresses]
            v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
            if mode == NicMode.BRIDGED.value and vlan is None and v4:
                dhcp.append(f"{mac},{v4[0]}")
        return "\n".join(names) + "\n", "\n".join(dhcp) + "\n"

    def _write(self, net: NetworkRecord) -> str:
        hosts, dhcp_hosts = self._files(net)
        where = self.dir / net.name
        where.mkdir(parents=True, exist_ok=True)
        for path in (FILES_ROOT, self.dir, where):
            path.chmod(0o755)
        for file, text in (("hosts", hosts), ("dhcp-hosts", dhcp_hosts)):
            tmp = where / f".{file}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o644)   # dnsmasq rereads them after dropping to its own user
            tmp.replace(where / file)
        return hosts + dhcp_hosts

    def argv(self, net: NetworkRecord) -> list[str]:
        where = self.dir / net.name
        subnet = ipaddress.ip_network(net.subnet4) if net.subnet4 else None
        argv = [dnsmasq_path() or "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
                "--strict-order", "--bind-interfaces", "--except-interface=lo", f"--interface={net.bridge}",
                "--no-hosts", f"--addn-hosts={where / 'hosts'}", "--domain-needed", "--bogus-priv",
                "--log-facility=-", "--quiet-dhcp"]
        for sub in (net.subnet4, net.subnet6):
            if sub:
                argv.append(f"--listen-address={ipam.gateway_of(ipaddress.ip_network(sub))}")
        if subnet is not None:
            gateway = ipam.gateway_of(subnet)
            argv += [f"--dhcp-range={subnet.network_address},static,{subnet.netmask},{LEASE_TIME}",
                     f"--dhcp-hostsfile={where / 'dhcp-hosts'}", "--dhcp-authoritative", "--leasefile-ro",
                     "--dhcp-ignore-names", "--dhcp-no-override",
                     f"--dhcp-option=option:router,{gateway}", f"--dhcp-option=option:dns-server,{gateway}"]
        if net.mtu != 1500:
            argv.append(f"--dhcp-option=option:mtu,{net.mtu}")
        return argv

    # ------------------------------------------------------------- processes

    def start(self, net: NetworkRecord) -> None:
        """net's dnsmasq (a leftover of an earlier ctd, found by its pid file, goes first)."""
        with self._lock:
            self._start(net)

    def _start(self, net: NetworkRecord) -> None:
        self.stop(net.name)
        self._kill_leftover(net.name)
        content = self._write(net)
        log_file = open(self.dir / net.name / "log", "ab")  # noqa: SIM115 — the child holds it
        try:
            proc = subprocess.Popen(self.argv(net), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    close_fds=True, start_new_session=True)
        finally:
            log_file.close()
        (self.dir / net.name / "pid").write_text(str(proc.pid))
        self.servers[net.name] = _Server(proc, content)

    def _kill_leftover(self, name: str) -> None:
        pid_file = self.dir / name / "pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmdline and cmdline[0].endswith(b"dnsmasq") and \
                    f"--addn-hosts={self.dir / name / 'hosts'}".encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                for _ in range(40):  # its sockets must be closed before ours bind
                    if not os.path.exists(f"/proc/{pid}"):
                        break
                    time.sleep(0.05)
        with contextlib.suppress(OSError):
            pid_file.unlink()

    def stop(self, name: str) -> None:
        with self._lock:
            self._stop(name)

    def _stop(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.proc.terminate()
            try:
                server.proc.wait(5)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
            with contextlib.suppress(OSError):
                (self.dir / name / "pid").unlink()

    def forget(self, name: str) -> None:
        """A deleted network: its dnsmasq and its files go (this ctd's directory too when empty)."""
        with self._lock:
            self.stop(name)
            shutil.rmtree(self.dir / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def stop_all(self) -> None:
        for name in list(self.servers):
            self.stop(name)

    def refresh(self, network: str | None = None) -> None:
        """Write the hosts files again where they changed and tell dnsmasq (SIGHUP)."""
        with self._lock:
            self._refresh(network)

    def _refresh(self, network: str | None) -> None:
        for name, server in list(self.servers.items()):
            if network is not None and name != network:
                continue
            net = self.db.get_network(name)
            if net is None:
                continue
            hosts, dhcp_hosts = self._files(net)
            if hosts + dhcp_hosts != server.hosts:
                server.hosts = self._write(net)
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGHUP)

    def tick(self) -> None:
        """Restart a dnsmasq that exited; bring every hosts file up to date."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        for name, server in list(self.servers.items()):
            if server.proc.poll() is not None:
                net = self.db.get_network(name)
                if net is None:
                    self.servers.pop(name, None)
                    continue
                log.warning("dnsmasq of network %s exited (status %s); starting it again (log: %s)",
                            name, server.proc.returncode, self.dir / name / "log")
                restarts = server.restarts + 1
                self._start(net)
                self.servers[name].restarts = restarts
        self._refresh(None)

    def view(self, name: str) -> dict[str, object]:
        server = self.servers.get(name)
        return {"running": bool(server and server.proc.poll() is None),
                "pid": server.proc.pid if server else None, "restarts": server.restarts if server else 0}
