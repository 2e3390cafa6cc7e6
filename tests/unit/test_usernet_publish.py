"""--publish values and the jail's resolv.conf, as data. No root, no namespaces."""

from __future__ import annotations

import pytest

from isol8r.usernet import Publish, UsernetError, parse_publish


@pytest.mark.parametrize("text, expected", [
    ("8080:80", Publish(8080, 80)),
    ("8080:80/tcp", Publish(8080, 80)),
    ("5353:53/udp", Publish(5353, 53, "udp")),
    ("127.0.0.1:8080:80", Publish(8080, 80, "tcp", "127.0.0.1")),
    ("[::1]:8080:80/udp", Publish(8080, 80, "udp", "::1")),
])
def test_publish_values_parse_and_print_back(text: str, expected: Publish) -> None:
    p = parse_publish(text)
    assert p == expected
    assert parse_publish(str(p)) == p


@pytest.mark.parametrize("text, why", [
    ("80", "expected [HOST_ADDR:]HOST_PORT:JAIL_PORT"),
    ("1:2:3:4", "expected [HOST_ADDR:]HOST_PORT:JAIL_PORT"),
    ("0:80", "bad port '0'"),
    ("8080:65536", "bad port '65536'"),
    ("http:80", "bad port 'http'"),
    ("8080:80/sctp", "protocol must be tcp or udp"),
    ("localhost:8080:80", "bad host address 'localhost'"),
    ("[::1:8080:80", "expected [ADDR]:HOST_PORT:JAIL_PORT"),
])
def test_bad_publish_values_are_one_line_errors_naming_them(text: str, why: str) -> None:
    with pytest.raises(UsernetError) as e:
        parse_publish(text)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--publish {text!r}: ") and why in msg, msg
