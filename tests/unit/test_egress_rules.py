"""The allow-list's rules as data: parsing, matching, address classes. No root, no sockets."""

from __future__ import annotations

import ipaddress

import pytest

from isol8r.egress_rules import (Policy, RuleError, address_class, normalize_host, parse_rule,
                                 split_host_port)


def a(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize("text, name, suffix, address, port", [
    ("example.org", "example.org", None, None, None),
    ("Example.ORG.", "example.org", None, None, None),
    ("pypi.org:443", "pypi.org", None, None, 443),
    ("*.example.org", None, ".example.org", None, None),
    ("*.example.org:8080", None, ".example.org", None, 8080),
    ("localhost", "localhost", None, None, None),
    ("10.0.0.5", None, None, "10.0.0.5", None),
    ("10.0.0.5:8080", None, None, "10.0.0.5", 8080),
    ("[fd00::5]:443", None, None, "fd00::5", 443),
    ("fd00::5", None, None, "fd00::5", None),
    ("[::ffff:127.0.0.1]", None, None, "127.0.0.1", None),
])
def test_rules_parse(text: str, name: str | None, suffix: str | None, address: str | None,
                     port: int | None) -> None:
    rule = parse_rule(text)
    assert (rule.name, rule.suffix, rule.port) == (name, suffix, port)
    assert rule.address == (a(address) if address else None)


@pytest.mark.parametrize("text, why", [
    ("", "expected PATTERN"),
    (" example.org", "expected PATTERN"),
    ("*", "every host"),
    ("*.org", "too broad"),
    ("a.*.org", "whole first label"),
    ("*example.org", "whole first label"),
    ("*.*.example.org", "after '*.'"),
    ("intranet", "needs a dot"),
    ("http://example.org", "not a URL"),
    ("10.0.0.0/8", "not a URL or a network"),
    ("example.org:0", "bad port"),
    ("example.org:65536", "bad port"),
    ("example.org:http", "bad port"),
    ("[fd00::5", "unclosed"),
    ("[fd00::5]x", "unexpected"),
    ("exa mple.org", "not a valid host name"),
    ("a..org", "not a valid host name"),
    ("-a.org", "not a valid host name"),
    ("x" * 64 + ".org", "not a valid host name"),
])
def test_bad_rules_are_one_line_errors_naming_the_value(text: str, why: str) -> None:
    with pytest.raises(RuleError) as e:
        parse_rule(text)
    msg = str(e.value)
    assert "\n" not in msg and repr(text) in msg and why in msg, msg


def test_wildcards_match_subdomains_only_as_srt_does() -> None:
    p = Policy.parse(["*.example.org"])
    assert p.admits_request("a.example.org", 443) is None
    assert p.admits_request("a.b.example.org", 443) is None
    assert p.admits_request("A.Example.Org.", 443) is None
    assert p.admits_request("example.org", 443) == "not in allow-list"
    assert p.admits_request("badexample.org", 443) == "not in allow-list"
    assert p.admits_request("example.org.evil.test", 443) == "not in allow-list"


def test_ports_restrict_a_rule() -> None:
    p = Policy.parse(["pypi.org:443", "files.pythonhosted.org"])
    assert p.admits_request("pypi.org", 443) is None
    assert p.admits_request("pypi.org", 80) == "not in allow-list"
    assert p.admits_request("files.pythonhosted.org", 8443) is None


def test_bare_addresses_need_an_address_rule() -> None:
    p = Policy.parse(["example.org", "192.0.2.7:80", "[2001:db8::7]"])
    assert p.admits_request("192.0.2.7", 80) is None
    assert p.admits_request("192.0.2.7", 443) == "address not in allow-list"
    assert p.admits_request("192.0.2.8", 80) == "address not in allow-list"
    assert p.admits_request("2001:db8::7", 22) is None
    assert p.admits_request("[2001:db8::7]", 22) is None
    assert p.admits_request("::ffff:192.0.2.7", 80) is None  # the same address to the kernel


@pytest.mark.parametrize("host", ["", "a b", "a\x00.org", "ex%61mple.org", "x" * 300,
                                  "a..b", "caf\xe9.org"])
def test_bad_host_names_are_refused_not_resolved(host: str) -> None:
    assert normalize_host(host) is None
    assert Policy.parse(["example.org"]).admits_request(host, 80) == "bad host name"


@pytest.mark.parametrize("addr, cls", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("fd00::1", "private"), ("100.64.0.1", "cgnat"), ("100.127.255.255", "cgnat"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
    ("192.0.2.1", "reserved"),  # documentation range: not global either
    ("1.1.1.1", None), ("2606:4700::1111", None), ("100.63.255.255", None),
])
def test_address_classes(addr: str, cls: str | None) -> None:
    assert address_class(a(addr)) == cls


def test_refused_addresses_open_only_by_an_address_rule() -> None:
    p = Policy.parse(["loop.test", "internal.test", "10.0.0.5:8080"])
    assert p.address_refusal(a("127.0.0.1"), 80) == "resolves to a loopback address 127.0.0.1"
    assert p.address_refusal(a("10.0.0.5"), 8080) is None
    assert p.address_refusal(a("10.0.0.5"), 80) == "resolves to a private address 10.0.0.5"
    assert p.address_refusal(a("::ffff:10.0.0.5"), 8080) is None
    assert p.address_refusal(a("1.1.1.1"), 443) is None


def test_the_hosts_own_addresses_are_refused() -> None:
    own = [a("203.0.113.9"), a("2001:db8::9")]
    p = Policy.parse(["example.org"], host_addresses=own)
    assert p.address_refusal(a("8.8.8.8"), 443) is None
    assert p.address_refusal(a("203.0.113.9"), 443) == "resolves to a host address 203.0.113.9"
    assert p.address_refusal(a("::ffff:203.0.113.9"), 443) == \
        "resolves to a host address 203.0.113.9"
    assert Policy.parse(["203.0.113.9"], own).address_refusal(a("203.0.113.9"), 443) is None


@pytest.mark.parametrize("text, out", [
    ("h.org", ("h.org", None)), ("h.org:1", ("h.org", 1)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("::1", ("::1", None)),
])
def test_split_host_port(text: str, out: tuple[str, int | None]) -> None:
    assert split_host_port(text) == out
