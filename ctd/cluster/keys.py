"""The cluster's keys in etcd: one place, so later parts (placement, migration, replication)
read the same layout. Everything lives below /ctd/.

    /ctd/cluster            {"created_at", "first_node"}: exists once `cluster init` ran
    /ctd/nodes/NAME         a member: {"name", "address", "fingerprint", "joined_at"} (no lease:
                            a member stays one while it is down, until `cluster remove`)
    /ctd/alive/NAME         on the node's lease: {"load1", "cpus", "ram_free", ...}; gone when
                            the lease lapses, which is what `offline` means
    /ctd/join/NAME          the SHA-256 of a pending join token's secret, on a lease of the
                            token's lifetime (etcd drops it at expiry)
    /ctd/instances/NAME     an instance name, held cluster-wide: {"node", "name", "state", ...}
                            (the owner node's summary of it, what `ctctl list` shows)
    /ctd/ids/N              an instance's numeric id, held cluster-wide: {"node", "name"}
    /ctd/macs/MAC           a NIC's MAC, held cluster-wide: {"node", "instance"} (nicclaims.py)
    /ctd/addresses/NET/IP   an address on network NET ("-": routed, no network): {"node", "instance"}
    /ctd/idmaps/BASE        a container's uid/gid range: {"node", "instance", "size"} (published)
    /ctd/replication/NAME   an instance's replication: {"target", "every", "ha"} (replicate.py)
    /ctd/replicas/NAME      the replica the target holds: {"node", "source", "gen", "at"}
    /ctd/ha/leader          the node that runs failovers, on its lease (ha.py)
"""

from __future__ import annotations

import ipaddress

ROOT = "/ctd/"
CLUSTER = ROOT + "cluster"
NODES = ROOT + "nodes/"
ALIVE = ROOT + "alive/"
JOIN = ROOT + "join/"
INSTANCES = ROOT + "instances/"
IDS = ROOT + "ids/"


EVACUATING = ROOT + "evacuating/"   # a node being emptied for maintenance: placement skips it


def evacuating(name: str) -> str:
    return EVACUATING + name


def node(name: str) -> str:
    return NODES + name


def alive(name: str) -> str:
    return ALIVE + name


def join(name: str) -> str:
    return JOIN + name


def instance(name: str) -> str:
    return INSTANCES + name


def instance_id(number: int) -> str:
    return f"{IDS}{number}"


def tail(key: str, prefix: str) -> str:
    return key[len(prefix):]


MACS = ROOT + "macs/"
ADDRESSES = ROOT + "addresses/"
ROUTED = "-"   # the network part of an address key of a routed NIC without a network


def mac(value: str) -> str:
    return MACS + value.lower()


def address(network: str | None, value: str) -> str:
    return f"{ADDRESSES}{network or ROUTED}/{ipaddress.ip_address(value)}"


def address_prefix(network: str | None) -> str:
    return f"{ADDRESSES}{network or ROUTED}/"


IDMAPS = ROOT + "idmaps/"


def idmap(base: int) -> str:
    return f"{IDMAPS}{base}"


REPLICATION = ROOT + "replication/"
REPLICAS = ROOT + "replicas/"
HA_LEADER = ROOT + "ha/leader"


def replication(name: str) -> str:
    return REPLICATION + name


def replica(name: str) -> str:
    return REPLICAS + name
