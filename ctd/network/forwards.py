"""Port forwards on NAT networks: DNAT from a host port (on one host address or all of them) to a
port of an instance on the network.

Contract:
- check_add() validates a request before anything is written: the network has NAT (its
  subnet is private and masqueraded; a bridge without NAT is reached directly), the instance has
  an IPv4 address on it, ports are 1-65535, proto tcp or udp, HOSTADDR is one of this host's
  IPv4 addresses. A host port another forward takes (same proto, same or any address) or a
  socket of the host listens on is a 409.
- The rules are one nft table per daemon (`<nft_table>_fwd`, family ip), written whole from the
  state at each change, at ctd start and when an instance's addresses change: a forward points
  at the instance's current first IPv4 address on the network, so an address given back to the
  pool never keeps receiving the forward. Forwards go with the network and the instance (rows
  ON DELETE CASCADE; destroy rewrites the table).
- Only traffic addressed to the host is translated (`fib daddr type local`): traffic passing
  through the host to other addresses is not. From the host itself, its own non-loopback
  addresses work (output hook); 127.0.0.1 does not (that would need route_localnet).

How it could be abused: a forward is a host-wide resource (a host port), so only an admin may
add or delete one (ctd/remote/policy.py); a tenant cannot point the host's port 22 at its
container. A forward to a port ctd's host listens on would steal that service: refused (409).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from ctd import validate
from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.network import nft
from ctd.state import StateDB

PROTOS = ("tcp", "udp")
_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Forward:
    id: int
    network: str
    host_addr: str | None    # None: every address of the host
    host_port: int
    proto: str
    instance_id: int
    port: int


def _port(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidRequest(f"invalid {what} {value!r}: a port 1-65535")
    return value


def _host_address(raw: Any) -> str | None:
    if raw is None:
        return None
    try:
        address = ipaddress.IPv4Address(raw)
    except (ValueError, TypeError):
        raise InvalidRequest(f"invalid host address {raw!r}: an IPv4 address of this host (forwards are "
                             "IPv4: NAT networks masquerade IPv4)") from None
    with socket.socket() as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            raise InvalidRequest(f"{address} is not an address of this host; 'ip -4 addr' shows them") from None
    return str(address)


def listeners(proto: str) -> list[tuple[str, int]]:
    """(address, port) of the sockets of this network namespace that listen (TCP) or are bound
    (UDP) for proto, IPv4 and IPv6 ("::" and "0.0.0.0" for any)."""
    found = []
    for version in ("", "6"):
        try:
            with open(f"/proc/net/{proto}{version}") as fh:
                lines = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if proto == "tcp" and fields[3] != _TCP_LISTEN:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc shows the address as 32-bit words in host order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((str(ipaddress.ip_address(words)), int(hex_port, 16)))
    return found


def _taken(address: str | None, other: str | None) -> bool:
    wild = {None, "0.0.0.0", "::"}
    return address in wild or other in wild or address == other


class Forwards:
    def __init__(self, db: StateDB, nft_table: str) -> None:
        self.db = db
        self.table = f"{nft_table}_fwd"

    # ------------------------------------------------------------- state

    def list(self, network: str | None = None) -> list[Forward]:
        query = "SELECT id, network, host_addr, host_port, proto, instance_id, port FROM forwards"
        rows = self.db.conn.execute(query + (" WHERE network = ?" if network else "") + " ORDER BY id",
                                    (network,) if network else ())
        return [Forward(*row) for row in rows]

    def view(self, fwd: Forward) -> dict[str, Any]:
        rec = self.db.get_instance(fwd.instance_id)
        return {"id": fwd.id, "network": fwd.network, "host_address": fwd.host_addr, "host_port": fwd.host_port,
                "proto": fwd.proto, "instance": rec.name if rec else None, "port": fwd.port,
                "target": self._target(fwd)}

    def _target(self, fwd: Forward) -> str | None:
        """The instance's first IPv4 address on the forward's network (None: it has none now)."""
        for nic in self.db.nics_of(fwd.instance_id):
            if nic.network == fwd.network:
                for address in nic.addresses:
                    if ipaddress.ip_address(address).version == 4:
                        return address
        return None

    def check_add(self, network: str, body: Any, instance_id: Any) -> Forward:
        """instance_id(ref) -> the instance's id (NotFound for an unknown one)."""
        body = validate.body_fields(body, {"host_address", "host_port", "instance", "port", "proto"},
                                    {"host_port", "instance", "port"})
        net = self.db.get_network(network)
        if net is None:
            raise NotFound(f"no network named {network!r}; 'ctctl network list' shows them")
        if not net.nat:
            raise InvalidRequest(f"network {network} has no NAT: forwards are for NAT networks (a bridge without "
                                 "NAT is reached at the instance's own address)")
        proto = body.get("proto", "tcp")
        if proto not in PROTOS:
            raise InvalidRequest(f"invalid proto {proto!r}: use tcp or udp")
        host_port, port = _port(body["host_port"], "host port"), _port(body["port"], "port")
        host_addr = _host_address(body.get("host_address"))
        fwd = Forward(0, network, host_addr, host_port, proto, instance_id(body["instance"]), port)
        if self._target(fwd) is None:
            raise InvalidRequest(f"instance {body['instance']} has no IPv4 address on network {network}")
        for other in self.list():
            if other.proto == proto and other.host_port == host_port and _taken(host_addr, other.host_addr):
                raise Conflict(f"host {proto} port {host_port} is forwarded already (forward {other.id} on "
                               f"{other.network}); delete it first or choose another port")
        for address, listening in listeners(proto):
            if listening == host_port and _taken(host_addr, address):
                raise Conflict(f"a program on the host listens on {proto} {address}:{host_port}; choose another "
                               "host port")
        return fwd

    def add(self, fwd: Forward) -> Forward:
        cursor = self.db.conn.execute(
            "INSERT INTO forwards (network, host_addr, host_port, proto, instance_id, port) VALUES (?, ?, ?, ?, ?, ?)",
            (fwd.network, fwd.host_addr, fwd.host_port, fwd.proto, fwd.instance_id, fwd.port))
        added = dataclasses.replace(fwd, id=int(cursor.lastrowid or 0))
        try:
            self.apply()
        except BaseException:
            self.db.conn.execute("DELETE FROM forwards WHERE id = ?", (added.id,))
            raise
        return added

    def delete(self, network: str, forward_id: int) -> None:
        gone = [f for f in self.list(network) if f.id == forward_id]
        if not gone:
            raise NotFound(f"network {network} has no forward {forward_id}; 'ctctl network forward list "
                           f"{network}' shows them")
        self.db.conn.execute("DELETE FROM forwards WHERE id = ?", (forward_id,))
        self.apply()

    def drop_instance(self, instance_id: int) -> None:
        """An instance goes: its forwards with it (before its address goes back to the pool)."""
        if self.db.conn.execute("DELETE FROM forwards WHERE instance_id = ?", (instance_id,)).rowcount:
            self.apply()

    # ------------------------------------------------------------- nft

    def script(self) -> str:
        lines = [f"table ip {self.table} {{}}", f"delete table ip {self.table}"]
        rules = []
        for fwd in self.list():
            target = self._target(fwd)
            if target is None:
                continue
            where = f"ip daddr {fwd.host_addr}" if fwd.host_addr else "fib daddr type local"
            rules.append(f"{where} meta l4proto {fwd.proto} th dport {fwd.host_port} dnat to {target}:{fwd.port}")
        if rules:
            lines.append(f"add table ip {self.table}")
            for chain, hook in (("pre", "prerouting"), ("out", "output")):
                lines.append(f"add chain ip {self.table} {chain} {{ type nat hook {hook} priority -100; }}")
                skip = "ip daddr != 127.0.0.0/8 " if chain == "out" else ""
                lines += [f"add rule ip {self.table} {chain} {skip}{rule}" for rule in rules]
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        """Write the table from the state (it is removed when no forward is left)."""
        try:
            nft.run(self.script())
        except OSError as exc:
            raise OperationFailed(f"nftables refused the port forwards: {exc}") from None
