"""Cluster networks as Docker bridge networks on one host (see ``tesai.agent.network``)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Final

import psutil

from tesai.agent.network import (
    LABEL_CLUSTER,
    ClusterNetwork,
    NetworkUnavailable,
    network_name,
)

log = logging.getLogger(__name__)

SUBNET_POOL_ENV: Final = "TESAI_NODE_SUBNET_POOL"
"""Where cluster networks' subnets come from (default 172.30.0.0/16, cut into /24s)."""
DEFAULT_SUBNET_POOL: Final = "172.30.0.0/16"


def pick_subnet(pool: str, used: Iterable[str], prefix: int = 24) -> ipaddress.IPv4Network | None:
    """The first ``/prefix`` of ``pool`` that overlaps none of ``used`` (networks in CIDR)."""
    taken = []
    for cidr in used:
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(cidr, strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                taken.append(net)
    for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=prefix):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    return None


def address_in(subnet: str, node_index: int, taken: Iterable[str] = ()) -> str:
    """Node ``node_index``'s address in ``subnet``: the (index+2)th host (the first is the
    gateway), or the first free one when that is taken (an index past the subnet's size)."""
    net = ipaddress.IPv4Network(subnet)
    hosts = [str(h) for h in net.hosts()][1:]  # hosts[0] of the subnet is the bridge gateway
    busy = {t.split("/")[0] for t in taken}
    preferred = hosts[node_index % len(hosts)]
    if preferred not in busy:
        return preferred
    for host in hosts:
        if host not in busy:
            return host
    raise NetworkUnavailable(f"no free address left in {subnet}")


def host_subnets() -> list[str]:
    """The networks of this host's own interfaces (a cluster subnet must not shadow them)."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and a.netmask:
                with contextlib.suppress(ValueError):
                    out.append(str(ipaddress.IPv4Interface(f"{a.address}/{a.netmask}").network))
    return out


class BridgeNetwork:
    """One user-defined bridge network per cluster on this host (see the module docstring)."""

    def __init__(self, client: Callable[[], Any], pool: str | None = None) -> None:
        self._client = client
        self.pool = pool or os.environ.get(SUBNET_POOL_ENV) or DEFAULT_SUBNET_POOL

    def _find(self, name: str) -> Any | None:
        for net in self._client().networks.list(names=[name]):
            if net.name == name:
                return net
        return None

    def ensure(self, cluster_id: str) -> ClusterNetwork:
        import docker.errors  # type: ignore[import-untyped]  # optional: container mode only
        import docker.types  # type: ignore[import-untyped]

        name = network_name(cluster_id)
        client = self._client()
        used: list[str] = []
        for _ in range(8):
            existing = self._find(name)
            if existing is not None:
                return ClusterNetwork(name, _subnet_of(existing))
            used += host_subnets()
            for net in client.networks.list():
                used += [
                    c.get("Subnet", "") for c in (net.attrs.get("IPAM") or {}).get("Config") or []
                ]
            subnet = pick_subnet(self.pool, used)
            if subnet is None:
                raise NetworkUnavailable(f"no free /24 left in {self.pool} ({SUBNET_POOL_ENV})")
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                client.networks.create(
                    name,
                    driver="bridge",
                    ipam=ipam,
                    check_duplicate=True,
                    labels={LABEL_CLUSTER: cluster_id},
                )
            except docker.errors.APIError as exc:
                # Another agent on this host made it, or took the subnet, meanwhile: look again.
                log.info("network %s on %s not created (%s); trying again", name, subnet, exc)
                used.append(str(subnet))
                continue
            log.info("created network %s (%s)", name, subnet)
            return ClusterNetwork(name, str(subnet))
        raise NetworkUnavailable(f"could not create network {name}")

    def node_address(self, network: ClusterNetwork, node_index: int) -> str:
        net = self._find(network.name)
        taken: list[str] = []
        if net is not None:
            net.reload()
            taken = [c.get("IPv4Address", "") for c in (net.attrs.get("Containers") or {}).values()]
        return address_in(network.subnet, node_index, taken)

    def release(self, cluster_id: str) -> bool:
        import docker.errors  # type: ignore[import-untyped]

        client = self._client()
        left = client.containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster_id}"})
        if left:
            return False
        net = self._find(network_name(cluster_id))
        if net is None:
            return True
        try:
            net.remove()
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            log.warning("network %s not removed: %s", net.name, exc)
            return False
        log.info("removed network %s", net.name)
        return True


def _subnet_of(net: Any) -> str:
    configs = (net.attrs.get("IPAM") or {}).get("Config") or []
    for c in configs:
        if c.get("Subnet"):
            return str(c["Subnet"])
    raise NetworkUnavailable(f"network {net.name} has no subnet of ours")
