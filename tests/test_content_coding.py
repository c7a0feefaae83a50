"""Content codings undone within a bound: every coding, stacks, damage, bombs, missing codecs."""

from __future__ import annotations

import functools
import gzip
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
from backports import zstd

from shadowproxy.compare.content_coding import (
    FAILURES,
    STEP_BYTES,
    CodingError,
    codings,
    decode,
)

BODY = b'{"predictions": [[0.1, 0.2, 0.7]], "model_version": "7"}' * 200
LIMIT = 1 << 20


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
    "identity": lambda data: data,
}


def encode(data: bytes, header: str) -> bytes:
    """``data`` with the codings of ``header`` applied in order (first listed, first applied)."""
    for name in header.split(","):
        data = ENCODERS[name.strip().lower()](data)
    return data


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ()),
        ("", ()),
        ("gzip", ("gzip",)),
        ("GZip", ("gzip",)),
        ("x-gzip", ("gzip",)),
        ("identity", ()),
        ("gzip, br", ("gzip", "br")),
        (" deflate ,, identity, zstd ", ("deflate", "zstd")),
    ],
)
def test_the_header_lists_codings_in_the_order_applied(
    header: str | None, expected: tuple[str, ...]
) -> None:
    assert codings(header) == expected


@pytest.mark.parametrize(
    "header",
    ["gzip", "x-gzip", "deflate", "br", "zstd", "identity", "GZIP", "gzip, br", "br, gzip",
     "zstd, gzip, deflate", "gzip, identity"],
)  # fmt: skip
def test_every_coding_and_stack_decodes_to_the_original(header: str) -> None:
    assert decode(encode(BODY, header), header, LIMIT) == BODY


@pytest.mark.parametrize(
    ("variant", "header", "encoded"),
    [
        ("raw deflate, as browsers accept it", "deflate", raw_deflate(BODY)),
        (
            "gzip members back to back",
            "gzip",
            gzip.compress(BODY[:999]) + gzip.compress(BODY[999:]),
        ),
        ("gzip and zero padding", "gzip", gzip.compress(BODY) + bytes(16)),
        ("zstd frames back to back", "zstd", zstd.compress(BODY[:999]) + zstd.compress(BODY[999:])),
    ],
)
def test_variants_servers_send_decode_too(variant: str, header: str, encoded: bytes) -> None:
    assert decode(encoded, header, LIMIT) == BODY


def test_nothing_to_decode_is_returned_as_is() -> None:
    assert decode(BODY, None, LIMIT) is BODY
    assert decode(b"", "gzip", LIMIT) == b""  # a 204 or a HEAD answer says gzip too


def zstd_wide_window() -> bytes:
    """A streamed zstd frame (no content size) with a 128 MiB window: its decoder would
    allocate that much, beyond what HTTP allows (8 MiB)."""
    packer = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 27})
    return packer.compress(BODY) + packer.flush()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


DAMAGE: list[tuple[str, bytes, str, str]] = [
    # (case, body, Content-Encoding, failure)
    ("gzip cut in half", half(gzip.compress(BODY)), "gzip", "truncated"),
    ("deflate cut in half", half(zlib.compress(BODY)), "deflate", "truncated"),
    ("br cut in half", half(brotli.compress(BODY)), "br", "truncated"),
    ("zstd cut in half", half(zstd.compress(BODY)), "zstd", "truncated"),
    ("plain JSON said to be gzip", BODY, "gzip", "corrupt"),
    ("plain JSON said to be br", BODY, "br", "corrupt"),
    ("plain JSON said to be zstd", BODY, "zstd", "corrupt"),
    ("gzip with a damaged checksum", gzip.compress(BODY)[:-8] + bytes(8), "gzip", "corrupt"),
    ("gzip followed by garbage", gzip.compress(BODY) + b"garbage", "gzip", "corrupt"),
    ("stack listed in the wrong order", encode(BODY, "gzip, br"), "br, gzip", "corrupt"),
    ("LZW compress", b"\x1f\x9d\x90{", "compress", "unsupported"),
    ("an unknown coding", b"...", "lz4", "unsupported"),
    ("gzip over the limit", gzip.compress(bytes(LIMIT + 1)), "gzip", "too_large"),
    ("br over the limit", brotli.compress(bytes(LIMIT + 1)), "br", "too_large"),
    ("zstd over the limit", zstd.compress(bytes(LIMIT + 1)), "zstd", "too_large"),
    ("deflate over the limit", zlib.compress(bytes(LIMIT + 1)), "deflate", "too_large"),
    ("zstd asking for a 128 MiB window", zstd_wide_window(), "zstd", "too_large"),
]


@pytest.mark.parametrize(("case", "body", "header", "failure"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_a_reason_never_a_crash(
    case: str, body: bytes, header: str, failure: str
) -> None:
    with pytest.raises(CodingError) as caught:
        decode(body, header, LIMIT)
    assert caught.value.failure == failure
    assert caught.value.failure in FAILURES
    reason = caught.value.reason
    name = codings(header)[-1] if failure != "too_large" else None
    assert name is None or name in reason, reason
    if failure == "too_large" and "window" not in case:
        assert f"more than {LIMIT} bytes (max_decoded_bytes)" in reason


def test_the_limit_is_inclusive() -> None:
    assert decode(gzip.compress(bytes(LIMIT)), "gzip", LIMIT) == bytes(LIMIT)
    assert decode(brotli.compress(bytes(LIMIT)), "br", LIMIT) == bytes(LIMIT)
    assert decode(zstd.compress(bytes(LIMIT)), "zstd", LIMIT) == bytes(LIMIT)


@pytest.mark.parametrize("header", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_a_capture_cut_at_the_cap_decodes_to_its_start(header: str) -> None:
    big = b"".join(b'{"row": %d}\n' % n for n in range(20_000))
    encoded = encode(big, header)
    start = decode(encoded[: len(encoded) // 2], header, 10 * LIMIT, partial=True)
    assert big.startswith(start)
    with pytest.raises(CodingError, match="truncated"):
        decode(encoded[: len(encoded) // 2], header, 10 * LIMIT)


@functools.cache
def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """A valid gzip of ``inflated`` zero bytes, about a thousandth of that, made in a second:
    one fully flushed deflate block of 1 MiB of zeros, repeated."""
    zero = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(zero) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(inflated >> 20):
        crc = zlib.crc32(zero, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, inflated & 0xFFFFFFFF)
    return header + block * (inflated >> 20) + packer.flush() + trailer


def test_the_bomb_builder_makes_real_gzip() -> None:
    assert gzip.decompress(gzip_bomb(3 << 20)) == bytes(3 << 20)


def br_bomb(inflated: int = 1 << 30) -> bytes:
    packer, zero = brotli.Compressor(quality=1), bytes(1 << 20)
    return b"".join(packer.process(zero) for _ in range(inflated >> 20)) + packer.finish()


def zstd_bomb(inflated: int = 1 << 30) -> bytes:
    packer, zero = zstd.ZstdCompressor(level=1), bytes(1 << 20)
    return b"".join(packer.compress(zero) for _ in range(inflated >> 20)) + packer.flush()


@pytest.mark.parametrize(
    ("header", "bomb"), [("gzip", gzip_bomb), ("br", br_bomb), ("zstd", zstd_bomb)]
)
@pytest.mark.timeout(120)
def test_a_bomb_is_refused_within_the_bound(header: str, bomb: Callable[[], bytes]) -> None:
    """1 GiB behind about 1 MiB (gzip) or less: memory stays at the bound, not the bomb."""
    encoded = bomb()
    assert len(encoded) <= 1_100_000
    limit = 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CodingError) as caught:
            decode(encoded, header, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.failure == "too_large"
    assert peak < limit + 8 * STEP_BYTES, peak


def test_a_missing_codec_library_is_a_reason_naming_the_coding() -> None:
    """Without the compression extra, br and zstd bodies are incomparable with a reason
    that says what to install; gzip still works."""
    code = (
        "import sys, gzip\n"
        "sys.modules['brotli'] = None\n"
        "sys.modules['backports.zstd'] = None\n"
        "sys.modules['compression.zstd'] = None\n"
        "from shadowproxy.compare.content_coding import CodingError, decode\n"
        "assert decode(gzip.compress(b'{}'), 'gzip', 100) == b'{}'\n"
        "for coding in ('br', 'zstd'):\n"
        "    try:\n"
        "        decode(b'\\x28\\xb5\\x2f\\xfd', coding, 100)\n"
        "    except CodingError as exc:\n"
        "        print(exc.failure, exc.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    extra = "which is not installed (the compression extra)"
    assert lines == [
        f"unsupported is br-encoded and decoding br needs the brotli package, {extra}",
        f"unsupported is zstd-encoded and decoding zstd needs the backports.zstd package, {extra}",
    ]


def test_the_module_is_pure_and_loads_codecs_only_when_used() -> None:
    code = (
        "import sys, shadowproxy.compare.content_coding; "
        "loaded = {'aiohttp', 'brotli', 'backports.zstd', 'pyarrow'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
