"""The egress allow-list as data: rule parsing, host matching and address classes, no I/O.

Kept apart from the proxy (`daemon/egress.py`) so that the spec and profile layer can validate
`--allow-domain` values without importing a server.

Rule syntax, one value of `--allow-domain PATTERN[:PORT]`:

- `example.org`       that name exactly (case-insensitive, a trailing dot ignored), any port;
- `*.example.org`     any sub-domain (`a.example.org`, `a.b.example.org`) but NOT `example.org`
                      itself, as srt (anthropic-experimental/sandbox-runtime,
                      `matchesDomainPattern`) does; like srt, `*.org` (a wildcard over a single
                      label), a bare `*` and any other use of `*` are refused as too broad, and a
                      plain name needs a dot unless it is `localhost`;
- `10.0.0.5`, `[fd00::5]`  an address literal: the only way to open an address the proxy refuses
                      by default (loopback, link-local and the metadata service, private, CGNAT,
                      the host's own, ...). It admits a request naming that address, and lets an
                      allowed name that resolves to it through;
- any of these with `:PORT` (1-65535) limits the rule to that port: `pypi.org:443`,
  `[fd00::5]:8080`. Without a port a rule admits every port.

A name rule never opens a refused address: an allowed name that resolves to 127.0.0.1 or
169.254.169.254 (a rebinding) is refused unless an address rule names that address too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

# Address classes the proxy refuses unless an address rule names the address. Order matters:
# the first match names the reason (CGNAT before "private", the metadata range as link-local).
_V4_CLASSES: tuple[tuple[str, ipaddress.IPv4Network], ...] = tuple(
    (name, ipaddress.IPv4Network(net)) for name, net in (
        ("unspecified", "0.0.0.0/8"),
        ("loopback", "127.0.0.0/8"),
        ("link-local", "169.254.0.0/16"),
        ("private", "10.0.0.0/8"),
        ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"),
        ("cgnat", "100.64.0.0/10"),
        ("reserved", "192.0.0.0/24"),
        ("reserved", "198.18.0.0/15"),
        ("multicast", "224.0.0.0/4"),
        ("broadcast", "255.255.255.255/32"),
        ("reserved", "240.0.0.0/4"),
    ))
_V6_CLASSES: tuple[tuple[str, ipaddress.IPv6Network], ...] = tuple(
    (name, ipaddress.IPv6Network(net)) for name, net in (
        ("unspecified", "::/128"),
        ("loopback", "::1/128"),
        ("link-local", "fe80::/10"),
        ("private", "fc00::/7"),
        ("private", "fec0::/10"),
        ("multicast", "ff00::/8"),
    ))


class RuleError(ValueError):
    """A bad allow-list value; the message is one line naming it."""


@dataclass(frozen=True)
class Rule:
    """One parsed `--allow-domain` value: `name` exact, `*.suffix`, or an address literal."""

    text: str
    name: str | None = None          # exact host name, lower case
    suffix: str | None = None        # for `*.example.org`: ".example.org"
    address: Address | None = None
    port: int | None = None          # None: every port

    def admits(self, host: str, port: int) -> bool:
        """Whether this rule lets a request for host (normalized) and port through."""
        if self.port is not None and port != self.port:
            return False
        if self.address is not None:
            addr = address_of(host)
            return addr is not None and unmapped(addr) == self.address
        if self.suffix is not None:
            return host.endswith(self.suffix)
        return host == self.name

    def names_address(self, addr: Address, port: int) -> bool:
        return (self.address is not None and self.address == unmapped(addr)
                and (self.port is None or self.port == port))


def address_of(text: str) -> Address | None:
    """The address a host string names (`1.2.3.4`, `::1`, `[::1]`), else None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def unmapped(addr: Address) -> Address:
    """`::ffff:127.0.0.1` is 127.0.0.1 to the kernel; judge it as that."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_class(addr: Address) -> str | None:
    """The refused class an address falls in (`loopback`, `link-local`, ...), None if public."""
    addr = unmapped(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        for name, net in _V4_CLASSES:
            if addr in net:
                return name
    else:
        for name, net in _V6_CLASSES:
            if addr in net:
                return name
        if addr in ipaddress.IPv6Network("::/96"):  # deprecated IPv4-compatible form
            return "reserved"
    return None if addr.is_global else "reserved"


def normalize_host(host: str) -> str | None:
    """A requested host in canonical form (lower case, no trailing dot), None if not a name
    or an address literal (a bad name is refused, never resolved)."""
    addr = address_of(host)
    if addr is not None:
        return str(unmapped(addr))
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    if not all(_LABEL.match(label) for label in host.split(".")):
        return None
    return host


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (no port).

    Raises ValueError naming the text when the port is not a number in 1-65535.
    """
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']' in {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port {port_text!r} in {text!r} (1-65535)")
    return host, int(port_text)


def parse_rule(text: str) -> Rule:
    """One `--allow-domain` value as a Rule; RuleError (one line, naming it) when bad."""
    def bad(why: str) -> RuleError:
        return RuleError(f"--allow-domain {text!r}: {why}")

    if not isinstance(text, str) or not text or text != text.strip():
        raise bad("expected PATTERN[:PORT], e.g. pypi.org:443 or *.example.org")
    if "://" in text or "/" in text:
        raise bad("a host name pattern, not a URL or a network")
    try:
        host, port = split_host_port(text)
    except ValueError as e:
        raise bad(str(e)) from None
    addr = address_of(host)
    if addr is not None:
        return Rule(text, address=unmapped(addr), port=port)
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if host.startswith("*."):
        base = host[2:]
        if "*" in base or normalize_host(base) != base:
            raise bad("after '*.' must come a host name, e.g. *.example.org")
        if "." not in base:
            raise bad(f"'*.{base}' is too broad: the wildcard must sit above a domain with a dot")
        return Rule(text, suffix="." + base, port=port)
    if host == "*":
        raise bad("a bare '*' would allow every host; name the hosts")
    if "*" in host:
        raise bad("'*' is only allowed as a whole first label: *.example.org")
    if normalize_host(host) != host:
        raise bad("not a valid host name")
    if "." not in host and host != "localhost":
        raise bad("a host name needs a dot (or use localhost)")
    return Rule(text, name=host, port=port)


@dataclass(frozen=True)
class Policy:
    """An allow-list. `host_addresses` are the proxy host's own, refused like loopback."""

    rules: tuple[Rule, ...]
    host_addresses: frozenset[Address] = frozenset()

    @classmethod
    def parse(cls, values: Iterable[str],
              host_addresses: Iterable[Address] = ()) -> "Policy":
        return cls(tuple(parse_rule(v) for v in values),
                   frozenset(unmapped(a) for a in host_addresses))

    def admits_request(self, host: str, port: int) -> str | None:
        """None if a request for host:port may be resolved and tried, else the reason."""
        norm = normalize_host(host)
        if norm is None:
            return "bad host name"
        if any(r.admits(norm, port) for r in self.rules):
            return None
        if address_of(norm) is not None:
            return "address not in allow-list"
        return "not in allow-list"

    def address_refusal(self, addr: Address, port: int) -> str | None:
        """None if the proxy may connect to addr:port, else the reason (the address class)."""
        if any(r.names_address(addr, port) for r in self.rules):
            return None
        plain = unmapped(addr)
        if plain in self.host_addresses:
            return f"resolves to a host address {plain}"
        cls = address_class(plain)
        return None if cls is None else f"resolves to a {cls} address {plain}"
