"""Where webhooks may point: public addresses only, unless the deployment allows more.

A webhook URL is chosen by a user and fetched by our servers, so without a check any
user could make the notifications service POST into the private network it runs in
(metadata endpoints, databases, admin consoles): server-side request forgery. The URL's
host is checked when it is registered and again, freshly resolved, before every
delivery (its DNS may have changed since). Redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms refused whatever they embed: IPv4-compatible addresses are deprecated and
# never routed (RFC 4291); local-use NAT64 prefixes place the IPv4 address anywhere
# (RFC 8215); Teredo hides it, obfuscated, behind a public relay (RFC 4380).
_REFUSED_OUTRIGHT = tuple(
    ipaddress.IPv6Network(net) for net in ("::/96", "64:ff9b:1::/48", "2001::/32")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix (RFC 6052)


def refused_address(address: Address) -> bool:
    """True for anything but a public unicast address (loopback, private, link-local,
    shared/CGNAT, unspecified, multicast, reserved...).

    An IPv6 address that carries an IPv4 one reaches that IPv4 host, so it is judged by
    it: IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d`` (what DNS64 answers on
    IPv6-only networks, so a public one stays allowed) and 6to4 ``2002:aabb:ccdd::/48``.
    IPv4-compatible ``::a.b.c.d``, local-use NAT64 ``64:ff9b:1::/48`` and Teredo
    ``2001::/32`` are refused outright.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in net for net in _REFUSED_OUTRIGHT):
            return True
        address = embedded_ipv4(address) or address
    return not address.is_global or address.is_multicast


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that packets to ``address`` end up at (mapped, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour


def refusal(url: str) -> str | None:
    """Why ``url`` may not be a webhook target, or None if it may.

    Blocks on DNS (call it off the event loop). A host that does not resolve is not
    refused here: delivering to it fails on its own, and it may resolve later.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return "the URL has no host"
    try:
        addresses: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    refused = sorted({str(a) for a in addresses if refused_address(a)})
    if refused:
        return f"{host} is not a public address ({', '.join(refused)})"
    return None
