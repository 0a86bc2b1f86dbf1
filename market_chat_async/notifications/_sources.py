"""Where a request comes from: the Market's networks and the ``X-Forwarded-For`` rule.

Pure functions of addresses; the receiver asks :func:`client_address` and checks the answer
against ``allow_from``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
NetworkSpec = str | IPv4Network | IPv6Network

MARKET_NETWORKS: Final[tuple[IPv4Network, ...]] = (
    IPv4Network("5.45.207.0/25"),
    IPv4Network("141.8.142.0/25"),
    IPv4Network("5.255.253.0/25"),
)


def _parse_address(text: str) -> IPAddress | None:
    """An address as ``X-Forwarded-For`` or a peer names it (port and brackets allowed)."""
    host = text.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        host = host[1:end]
    elif host.count(":") == 1:  # IPv4 with a port
        host = host.partition(":")[0]
    try:
        addr = ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return addr


def networks(name: str, value: NetworkSpec | Iterable[NetworkSpec]) -> tuple[IPNetwork, ...]:
    """``value`` (one network or several, as text or objects) as a tuple, or a clear error."""
    items: Iterable[NetworkSpec] = (
        (value,) if isinstance(value, str | IPv4Network | IPv6Network) else value
    )
    found = []
    for item in items:
        try:
            found.append(item if not isinstance(item, str) else ip_network(item.strip()))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc} (give networks like '5.45.207.0/25')") from None
    return tuple(found)


def client_address(
    remote: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address a request came from, believing ``X-Forwarded-For`` only from trusted proxies.

    The chain is the peer preceded by the ``X-Forwarded-For`` entries (all its headers, in
    order); walking it from the right, the first address that is not a trusted proxy is the
    client. ``None`` when that entry is unreadable (or there is no peer address).

    >>> proxies = [ip_network("10.0.0.0/8")]
    >>> str(client_address("10.0.0.2", ["1.2.3.4, 5.45.207.9"], proxies))
    '5.45.207.9'
    >>> str(client_address("8.8.8.8", ["5.45.207.9"], proxies))  # not a proxy: header ignored
    '8.8.8.8'
    """
    peer = _parse_address(remote) if remote else None
    if peer is None or not in_any(peer, trusted_proxies):
        return peer
    chain = [entry for header in forwarded_for for entry in header.split(",")]
    current: IPAddress | None = peer
    for entry in reversed(chain):
        current = _parse_address(entry)
        if current is None or not in_any(current, trusted_proxies):
            return current
    return current


def in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)
