"""Service names (SPEC.md §7.1): a name like ``"tools"`` stands for a port both ends compute,
``32768 + (first two bytes, big-endian, of BLAKE3.derive_key(CONTEXT, name)) % 16384``; a
decimal number is that port.

BLAKE3 is not in Python's standard library; a service name (at most 63 bytes) and the context
each fit one 64-byte block of one chunk, so the one-block case of BLAKE3 is all this needs.
"""

from __future__ import annotations

import re
import struct

CONTEXT = "tern 2026-11 service port v1"
NAMED_PORTS_START = 32768
NAMED_PORTS = 16384

_IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)
_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _ROOT = 1, 2, 8
_DERIVE_KEY_CONTEXT, _DERIVE_KEY_MATERIAL = 32, 64
_MASK = 0xFFFFFFFF
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NUMBER = re.compile(r"\+?[0-9]+")


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _MASK


def _g(s: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    s[a] = (s[a] + s[b] + x) & _MASK
    s[d] = _rotr(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotr(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b] + y) & _MASK
    s[d] = _rotr(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotr(s[b] ^ s[c], 7)


def _compress(key: tuple[int, ...], block: bytes, flags: int) -> tuple[int, ...]:
    """The first eight output words of one block, chunk 0, as the root."""
    m = list(struct.unpack("<16I", block.ljust(64, b"\0")))
    s = [*key, *_IV[:4], 0, 0, len(block), flags]
    for round_ in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if round_ < 6:
            m = [m[i] for i in _PERMUTATION]
    return tuple(s[i] ^ s[i + 8] for i in range(8))


def derive_key(context: str, material: bytes) -> bytes:
    """BLAKE3's derive_key, for a context and key material of at most 64 bytes each."""
    context_bytes = context.encode()
    if len(context_bytes) > 64 or len(material) > 64:
        raise ValueError("this BLAKE3 handles one block: at most 64 bytes")
    single = _CHUNK_START | _CHUNK_END | _ROOT
    context_key = _compress(_IV, context_bytes, single | _DERIVE_KEY_CONTEXT)
    return struct.pack("<8I", *_compress(context_key, material, single | _DERIVE_KEY_MATERIAL))


def service_port(name: str) -> int:
    """The port a service name (or a decimal port number) stands for."""
    # As tern-proto: whatever parses as a u16 is that port; anything else must be a name.
    if _NUMBER.fullmatch(name) and int(name) <= 0xFFFF:
        return int(name)
    if not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not a service name: 1-63 of a-z, 0-9 and '-', not starting or "
            "ending with '-'"
        )
    digest = derive_key(CONTEXT, name.encode())
    return NAMED_PORTS_START + int.from_bytes(digest[:2], "big") % NAMED_PORTS
