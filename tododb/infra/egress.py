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


def refused_address(address: Address) -> bool:
    """True for anything but a public unicast address (loopback, private, link-local...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


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
