"""NetworkManager: the one object the daemon, the API and the instance manager hold for
networking. It checks its settings and hands each call to the part that does it:

    networks.py   host networks (bridges, subnets, NAT)
    nics.py       NICs at create (or added later): the request checked, MACs and addresses allocated
    plumbing.py   the host side while an instance runs: links, VLAN, filters, held netns, counters;
                  plug/unplug a NIC of a running container (ctd/instance/nicplug.py drives it)
    addresses.py  live --ipadd/--ipdel/--rate on NIC 0
    firewalls.py  the firewall per instance (firewall.py: rules and their nft; fwstore.py: state)
    forwards.py   port forwards (DNAT) on NAT networks
    dhcp.py       dnsmasq per network: DHCP from ctd's allocation, DNS for instance names

Methods that touch links or nft run in threads (asyncio.to_thread); allocate and check_* are
state only.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ctd.errors import InvalidRequest
from ctd.network import nft, nics
from ctd.network.addresses import AddressChanges
from ctd.network.dhcp import DhcpServers
from ctd.network.firewalls import Firewalls
from ctd.network.forwards import Forwards
from ctd.network.netlink import InsideNic
from ctd.network.networks import DEFAULT_NETWORK, IFNAME, NetworkRequest, Networks
from ctd.network.nics import MAX_NICS, NicRequest
from ctd.network.plumbing import Plumbing
from ctd.state import InstanceRecord, NetworkRecord, NicRecord, StateDB

__all__ = ["DEFAULT_NETWORK", "MAX_NICS", "NetworkManager", "NicRequest"]


class NetworkManager:
    def __init__(self, db: StateDB, nft_table: str, nic_prefix: str = "ve",
                 default_network: str = DEFAULT_NETWORK, run_dir: Path | None = None) -> None:
        self.db = db
        self.nft_table = nft_table
        if not re.fullmatch(r"[a-z]{2}", nic_prefix):
            raise InvalidRequest(f"nic_prefix must be two lowercase letters, not {nic_prefix!r}")
        if not isinstance(default_network, str) or (default_network and not IFNAME.match(default_network)):
            raise InvalidRequest(f"default_network must be a network name (1-15 lowercase letters, digits and "
                                 f"'-') or \"\" for none, not {default_network!r}")
        self.default_network = default_network  # "" : no NIC unless create asks for one
        self.prefix = nic_prefix
        self.dhcp = DhcpServers(db, run_dir or Path("/run/ctd"))
        self.networks = Networks(db, nft_table, default_network, self.dhcp)
        self.plumbing = Plumbing(db, self.networks, nic_prefix, nft_table)
        self.addresses = AddressChanges(db, self.networks, self.plumbing)
        self.firewall = Firewalls(db, self.plumbing, nft_table)
        self.forwards = Forwards(db, nft_table)
        # In a cluster (ctd/cluster/nicclaims.py, set by the daemon): other nodes' MACs and
        # addresses to avoid, and the claim that takes a new NIC's cluster-wide before it is written.
        self.foreign: Callable[[], nics.Foreign] = nics.Foreign
        self.claim: Callable[[str, int, list[NicRequest], int], Awaitable[None]] | None = None
        self.claimed: Callable[[str], None] = lambda name: None   # that work ended

    @property
    def netns(self) -> dict[int, int]:
        """Instance id -> netns fd held while it runs (-1 for a VM's taps)."""
        return self.plumbing.netns

    @property
    def filters(self) -> dict[str, nft.NicFilter]:
        """Host NIC name -> its anti-spoofing filter, for every running NIC that filters."""
        return self.plumbing.filters

    # ------------------------------------------------------------- interface names

    def host_name(self, nic: NicRecord) -> str:
        return self.plumbing.host_name(nic)

    def temp_name(self, nic: NicRecord) -> str:
        return self.plumbing.temp_name(nic)

    # ------------------------------------------------------------- networks

    def network(self, name: str) -> NetworkRecord:
        return self.networks.network(name)

    def view(self, net: NetworkRecord) -> dict[str, Any]:
        return self.networks.view(net)

    def check_create_network(self, body: Any) -> NetworkRequest:
        return self.networks.check_create_network(body)

    def create_network(self, checked: NetworkRequest) -> dict[str, Any]:
        return self.networks.create_network(checked)

    def bring_up(self, net: NetworkRecord) -> None:
        self.networks.bring_up(net)

    def delete_network(self, name: str) -> None:
        self.networks.delete_network(name)
        self.forwards.apply()  # its forwards went with its row

    def ensure_default(self) -> NetworkRecord:
        return self.networks.ensure_default()

    def restore(self) -> None:
        """After a reboot bridges are gone: bring every network back up, and the forwards."""
        self.networks.restore()
        self.forwards.apply()

    # ------------------------------------------------------------- NICs at create

    def check_nics(self, raw: Any) -> list[NicRequest]:
        """NICs asked for at create; none given (None): one on the default network, if the
        daemon has one; an empty list: no NIC."""
        return nics.check_nics(raw, self.default_network, self.network)

    def check_nic(self, raw: Any) -> NicRequest:
        """One NIC added after create (POST /1.0/instances/{ref}/nics)."""
        return nics.check_nic(raw, self.default_network, self.network)

    def prepare(self, requests: list[NicRequest]) -> None:
        """Make the default network if a NIC needs it and it is not there yet (netlink: call it
        in a thread, before allocate, which runs on the event loop)."""
        if any(r.network and r.network == self.default_network for r in requests):
            self.ensure_default()

    def allocate(self, instance_id: int, requests: list[NicRequest], first_idx: int = 0) -> list[NicRecord]:
        """Write the NICs and their addresses (inside the caller's transaction)."""
        return nics.allocate(self.db, self.networks, instance_id, requests, first_idx, self.foreign())

    # ------------------------------------------------------------- at start and stop

    def inside_config(self, rec: InstanceRecord) -> list[InsideNic]:
        """How the instance's NICs look inside (for the guest's own network files)."""
        return [self.plumbing.inside(n) for n in self.db.nics_of(rec.id)]

    def setup(self, rec: InstanceRecord, pid: int) -> list[InsideNic]:
        """Host side of every NIC of rec, whose init is pid; returns what to apply inside."""
        self.dhcp.refresh()  # its MACs known to dnsmasq before its guest asks
        return self.plumbing.setup(rec, pid)

    def adopt(self, rec: InstanceRecord, pid: int) -> None:
        """A container that kept running across a ctd restart: hold its netns, filter it again."""
        self.plumbing.adopt(rec, pid)

    def teardown(self, rec: InstanceRecord, gone: bool = False) -> None:
        """Save the counters, then let the NICs go (gone: the container has exited)."""
        self.plumbing.teardown(rec, gone)

    def apply_filters(self) -> None:
        """Write the anti-spoofing table with the filters held now (after recovery adopted the
        running instances: the filters of NICs whose instance died with the old ctd go)."""
        self.plumbing.refilter([], add=False)

    def remove_filters(self) -> None:
        """No container runs any more: the anti-spoofing table goes (made again at next start)."""
        self.plumbing.remove_filters()

    def setup_taps(self, rec: InstanceRecord) -> None:
        """A tap per NIC of a VM, on its bridge, filtered and shaped like a container's veth."""
        self.dhcp.refresh()
        self.plumbing.setup_taps(rec)

    def adopt_taps(self, rec: InstanceRecord) -> None:
        self.plumbing.adopt_taps(rec)

    def teardown_taps(self, rec: InstanceRecord) -> None:
        self.plumbing.teardown(rec)

    def counters(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        return self.plumbing.counters(rec)

    def counter_sources(self, rec: InstanceRecord) -> list[tuple[NicRecord, str, bool]]:
        """What counters() reads, split: the rows (here, on the loop) and the live part, which
        plumbing.nic_counters + netlink.link_stats may read in a thread (the list cache does)."""
        return self.plumbing.counter_sources(rec)

    # ------------------------------------------------------------- live changes

    def check_change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: int | None | str,
                     running: bool) -> None:
        """Everything change() would refuse, refused before anything is changed."""
        self.addresses.check_change(rec, ipadd, ipdel, rate, running)

    def restore_nics(self, rec: InstanceRecord, before: list[NicRecord], running: bool) -> list[InsideNic]:
        """NIC 0 back as it was before (a set that failed half-way)."""
        inside = self.addresses.restore_nics(rec, before, running)
        self.forwards.apply()
        return inside

    def change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: int | None | str,
               running: bool) -> list[InsideNic]:
        """--ipadd/--ipdel/--rate on NIC 0; returns what to apply inside when running."""
        inside = self.addresses.change(rec, ipadd, ipdel, rate, running)
        self.forwards.apply()  # a forward follows its instance's first IPv4 address
        return inside
