"""The networks of cluster nodes: how a cluster's containers reach each other, and nothing else.

Ray needs all-to-all reachability between the nodes of a cluster, at the addresses the nodes
advertise (ray #21205); on Docker's default bridge workers advertise an inner address the
others cannot reach (ray #7242), and host networking is no sandbox (a job reaches the host's
loopback services). So each cluster gets its own user-defined bridge network on each host,
``tesai-<cluster id>``, with a subnet the agent picks, and each node a fixed address in it
that Ray advertises (``--node-ip-address``): the cluster's containers on one host reach each
other, containers of other clusters sit on other bridges (Docker isolates bridges from each
other), and general internet egress stays open.

``NodeNetwork`` is the hook for clusters that span hosts (issue 18): an overlay
implementation attaches the same containers to a network whose addresses route between
hosts (WireGuard), and ``ContainerRuntime`` does not change. Not here yet: firewall rules
that keep a node from the provider's private ranges and from services bound to the host's
bridge gateway (a later step, nftables owned by the agent).

``bridge.BridgeNetwork`` is the one implementation today. docker-py objects are untyped;
they are ``Any`` there and stay inside it and ``tesai.agent.container_node``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

NETWORK_PREFIX: Final = "tesai-"
LABEL_CLUSTER: Final = "tesai.cluster"


class NetworkUnavailable(Exception):
    """No network for the cluster could be made (pool exhausted, the engine refused)."""


@dataclass(frozen=True, slots=True)
class ClusterNetwork:
    """A cluster's network on this host, as containers attach to it."""

    name: str
    subnet: str


class NodeNetwork(Protocol):
    """How a cluster's container nodes on this host are networked (bridge now, overlay later)."""

    def ensure(self, cluster_id: str) -> ClusterNetwork:
        """The cluster's network, made if missing. Raises NetworkUnavailable."""
        ...

    def node_address(self, network: ClusterNetwork, node_index: int) -> str:
        """The address node ``node_index`` gets (and advertises to Ray) on ``network``."""
        ...

    def release(self, cluster_id: str) -> bool:
        """Remove the cluster's network when no container of the cluster is left on this host;
        True when it is gone."""
        ...


def network_name(cluster_id: str) -> str:
    """``tesai-<cluster id>``."""
    return f"{NETWORK_PREFIX}{cluster_id}"
