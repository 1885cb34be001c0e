"""Where the control plane may connect to reach a cluster's head: an address from its own
records, checked before every connection.

The Ray proxy sends a customer's requests to the head's dashboard with the cluster's Ray
token. If the head's address were whatever its agent reports, a provider could point the
proxy at a service next to the control plane (its own loopback, the cloud's metadata
address, a private network) and read the answers back through it: server-side request
forgery. So:

- the host is the address the head's agent connects to the control plane *from* (the peer
  of its heartbeats as the API sees it; behind a reverse proxy, only the proxy's
  ``X-Forwarded-For`` when ``Settings.forwarded_allow_ips`` trusts that proxy), recorded
  with each heartbeat; the agent only reports the dashboard's port. A host the agent names
  is never used;
- before each connection the address is checked (``refusal``): the metadata addresses,
  unspecified, multicast and reserved ones always refused; loopback, link-local, private
  ranges and the control plane's own networks refused unless
  ``Settings.ray_proxy_allow_internal_heads`` (development: `tesai up` and the tests run
  every node on this machine);
- the address is an IP literal, so no name is resolved (no DNS rebinding between the check
  and the connection); redirects are never followed and the token goes only there.

Each refusal carries a reason code (``head_address_*``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

import psutil

from tesai.errors import Conflict
from tesai.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HEAD_ADDRESS_UNKNOWN: Final = "head_address_unknown"
"""No address of the head's agent is recorded, or the recorded one is not an IP address."""
HEAD_ADDRESS_METADATA: Final = "head_address_metadata"
"""A cloud's instance metadata service (credentials live there): refused even in development."""
HEAD_ADDRESS_RESERVED: Final = "head_address_reserved"
"""Unspecified, multicast or reserved: no head can live there."""
HEAD_ADDRESS_LOOPBACK: Final = "head_address_loopback"
HEAD_ADDRESS_LINK_LOCAL: Final = "head_address_link_local"
HEAD_ADDRESS_CONTROL_PLANE: Final = "head_address_control_plane"
"""One of the control plane's own networks (its interfaces', ``ray_proxy_denied_networks``)."""
HEAD_ADDRESS_PRIVATE: Final = "head_address_private"
"""A private or otherwise non-global range (RFC 1918, unique local, shared, documentation)."""

METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, …
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)


class HeadAddressRefused(Conflict):
    """The proxy will not connect to the address recorded for the cluster's head."""

    code = "head_address_refused"


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refusal(
    address: IPAddress, *, allow_internal: bool, own_networks: Iterable[IPNetwork]
) -> str | None:
    """Why the proxy must not connect to ``address`` (a ``head_address_*`` code), or None."""
    address = _plain(address)
    if address in METADATA_ADDRESSES:
        return HEAD_ADDRESS_METADATA
    if address.is_unspecified or address.is_multicast:
        return HEAD_ADDRESS_RESERVED
    if address.is_loopback:
        return None if allow_internal else HEAD_ADDRESS_LOOPBACK
    if address.is_link_local:
        return None if allow_internal else HEAD_ADDRESS_LINK_LOCAL
    if address.is_reserved:
        return HEAD_ADDRESS_RESERVED
    if allow_internal:
        return None
    if any(address in net for net in own_networks if net.version == address.version):
        return HEAD_ADDRESS_CONTROL_PLANE
    if address.is_private or not address.is_global:
        return HEAD_ADDRESS_PRIVATE
    return None


def parse_ip(text: str | None) -> IPAddress | None:
    """``text`` as an IP address (brackets and a zone index allowed), else None."""
    if not text:
        return None
    try:
        return _plain(ipaddress.ip_address(text.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def dashboard_url(peer: str | None, port: int | None) -> str | None:
    """The head's dashboard from our records: the agent's connection address and the port
    it reports; None when either is missing or the address is not an IP address."""
    address = parse_ip(peer)
    if address is None or not port or not 0 < port < 65536:
        return None
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{port}"


def url_address(url: str) -> IPAddress | None:
    """The IP address a recorded dashboard URL points at; None for a name or nonsense."""
    try:
        return parse_ip(urlsplit(url).hostname)
    except ValueError:
        return None


@lru_cache(maxsize=1)
def _interface_networks() -> tuple[IPNetwork, ...]:
    """The networks of this host's interfaces (read once per process)."""
    nets: list[IPNetwork] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6) or not a.netmask:
                continue
            try:
                iface = ipaddress.ip_interface(f"{a.address.split('%', 1)[0]}/{a.netmask}")
            except ValueError:
                continue
            nets.append(iface.network)
    return tuple(nets)


def own_networks(settings: Settings) -> Sequence[IPNetwork]:
    """The control plane's own networks: its interfaces' and ``ray_proxy_denied_networks``."""
    extra = [ipaddress.ip_network(n, strict=False) for n in settings.ray_proxy_denied_networks]
    return [*_interface_networks(), *extra]


def check_dashboard_url(settings: Settings, url: str | None) -> str:
    """``url`` when the proxy may connect to it; raises ``HeadAddressRefused`` with the
    reason code otherwise."""
    address = url_address(url) if url else None
    if url is None or address is None:
        raise HeadAddressRefused(
            "The control plane has no address of its own for this cluster's head",
            reason=HEAD_ADDRESS_UNKNOWN,
        )
    reason = refusal(
        address,
        allow_internal=settings.ray_proxy_allow_internal_heads,
        own_networks=own_networks(settings),
    )
    if reason is not None:
        raise HeadAddressRefused(
            f"The control plane does not connect to the address of this cluster's head ({reason})",
            reason=reason,
        )
    return url
