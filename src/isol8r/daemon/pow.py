"""kCTF's proof of work, so that players' existing solver scripts answer isol8r's listener.

The scheme (google/kctf, pow.py, version "s"): p = 2**1279 - 1, a challenge is a difficulty d
and a random x < 2**128; the solution y is d steps of "modular square root, then flip the low
bit" from x, which costs the player d exponentiations by (p + 1) / 4; checking it costs the
server d squarings ("flip the low bit, then square"), and accepts x or p - x (a root taken of
a non-residue lands on the root of -x). Numbers travel as big-endian base64, joined by dots
after the version: "s.<d>.<x>" is the challenge, "s.<y>" the solution.
"""

from __future__ import annotations

import base64
import binascii
import secrets

VERSION = "s"
MODULUS = 2**1279 - 1
CHALSIZE = 2**128
SOLVER_URL = "https://goo.gle/kctf-pow"
MAX_LINE = 4096  # a solution is ~220 characters: a longer line is not one


def encode_number(num: int) -> str:
    """As kCTF: a whole number of 3-byte groups, so base64 has no padding."""
    size = (num.bit_length() // 24) * 3 + 3
    return base64.b64encode(num.to_bytes(size, "big")).decode()


def decode_number(text: str) -> int:
    return int.from_bytes(base64.b64decode(text.encode(), validate=True), "big")


def encode(numbers: list[int]) -> str:
    return ".".join([VERSION] + [encode_number(n) for n in numbers])


def decode(text: str) -> list[int]:
    """ValueError for anything that is not "s." and base64 numbers."""
    parts = text.split(".")
    if parts[0] != VERSION or len(parts) < 2:
        raise ValueError(f"{text[:40]!r}: not a version {VERSION!r} proof of work")
    try:
        return [decode_number(p) for p in parts[1:]]
    except (binascii.Error, UnicodeError) as e:
        raise ValueError(f"{text[:40]!r}: {e}") from None


def challenge(difficulty: int) -> str:
    return encode([difficulty, secrets.randbelow(CHALSIZE)])


def verify(chal: str, solution: str) -> bool:
    """The solution's d squarings lead back to the challenge's x (or p - x)."""
    try:
        difficulty, x = decode(chal)
        numbers = decode(solution.strip())
    except ValueError:
        return False
    if len(numbers) != 1 or not 0 <= numbers[0] < MODULUS:
        return False
    y = numbers[0]
    for _ in range(difficulty):
        y = pow(y ^ 1, 2, MODULUS)
    return y == x or y == MODULUS - x


def banner(chal: str) -> bytes:
    """What kCTF's `pow.py ask` prints, word for word: solver scripts look for these lines."""
    return ("== proof-of-work: enabled ==\n"
            "please solve a pow first\n"
            "You can run the solver with:\n"
            f"    python3 <(curl -sSL {SOLVER_URL}) solve {chal}\n"
            "===================\n"
            "\n"
            "Solution? ").encode()


CORRECT = b"Correct\n"
FAILED = b"Proof-of-work fail\n"
