"""Content codings (``Content-Encoding``) undone within a size bound, or the reason why not.

Model servers compress what the client accepts: uvicorn's GZipMiddleware (in front of
MLServer) gzips every answer of 1 KB or more for a client that sends ``Accept-Encoding:
gzip``, as requests and httpx do by default; and clients compress their uploads. The
proxy passes those bytes on untouched. The recorder undoes the codings here, before
redaction and comparison, so predictions are read and bodies recorded as JSON.

| coding | decoder |
| --- | --- |
| ``gzip``, ``x-gzip`` | zlib (standard library); several members in a row are one body |
| ``deflate`` | zlib: the zlib format RFC 9110 names, or raw deflate, which browsers accept too |
| ``br`` | the ``brotli`` package (the ``compression`` extra) |
| ``zstd`` | ``compression.zstd`` (Python 3.14+) or ``backports.zstd`` (the ``compression`` extra) |
| ``identity`` | nothing to undo |

Stacked codings are listed in the order they were applied (``gzip, br``: gzip first), so
they are undone from the last. Every decoder is streamed with an output bound: a stage
stops as soon as its output would pass ``limit`` bytes, so a 1 MiB gzip that inflates to
1 GiB costs at most ``limit`` bytes of memory, then is refused. A successful decode holds
the result once more while it is joined (at most twice ``limit``).

Every failure is a ``CodingError`` with a short reason, never a crash: the pair becomes
incomparable and the reason is recorded. Pure: no I/O; the optional libraries are
imported on first use, so the serving process never loads them.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from typing import Any, Literal

CodingFailure = Literal["too_large", "truncated", "corrupt", "unsupported"]
FAILURES: tuple[CodingFailure, ...] = ("too_large", "truncated", "corrupt", "unsupported")

STEP_BYTES = 64 * 1024
"""Output produced per decoder call: the most a stage holds beyond ``limit``."""

ZSTD_WINDOW_LOG_MAX = 23
"""zstd's decoder allocates the window a frame asks for (up to 128 MiB by default, and
outside what ``limit`` counts); HTTP caps it at 8 MiB (RFC 9659), so larger is refused.
brotli's window is at most 16 MiB and zlib's 32 KiB."""

_ALIASES = {"x-gzip": "gzip"}
_ERROR_CHARS = 120


class CodingError(Exception):
    """Why a body cannot be decoded. ``reason`` completes "<side> body ...";
    ``failure`` is its class, for the metric label."""

    def __init__(self, failure: CodingFailure, reason: str) -> None:
        super().__init__(reason)
        self.failure: CodingFailure = failure
        self.reason = reason


def codings(content_encoding: str | None) -> tuple[str, ...]:
    """The codings of a ``Content-Encoding`` value in the order they were applied,
    lower-cased, aliases resolved, ``identity`` and empty items dropped."""
    if not content_encoding:
        return ()
    names = (item.strip().lower() for item in content_encoding.split(","))
    return tuple(_ALIASES.get(name, name) for name in names if name and name != "identity")


def decode(
    body: bytes, content_encoding: str | None, limit: int, *, partial: bool = False
) -> bytes:
    """``body`` with every coding of ``content_encoding`` undone, at most ``limit`` bytes.

    ``partial``: ``body`` is only the first part of what was sent (a capture cap cut
    it), so a stream that stops early is expected: its decoded start is returned.
    Raises ``CodingError``.
    """
    for name in reversed(codings(content_encoding)):
        if not body:
            break
        decoder = _DECODERS.get(name)
        if decoder is None:
            raise CodingError(
                "unsupported", f"has Content-Encoding {name!r}, which shadowproxy cannot decode"
            )
        body = decoder(body, limit, partial)
    return body


# --- one decoder per coding: (data, limit, partial) -> decoded --------------------------


class _Output:
    """Decoded chunks, refused as soon as they pass the limit."""

    __slots__ = ("chunks", "coding", "limit", "size")

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    @property
    def room(self) -> int:
        """How much the next call may produce: one byte past the limit proves it is passed."""
        return min(STEP_BYTES, self.limit - self.size + 1)

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.chunks.clear()
            raise CodingError(
                "too_large",
                f"decodes ({self.coding}) to more than {self.limit} bytes (max_decoded_bytes)",
            )
        if chunk:
            self.chunks.append(chunk)

    def result(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _corrupt(coding: str, exc: BaseException) -> CodingError:
    text = str(exc)[:_ERROR_CHARS] or type(exc).__name__
    return CodingError("corrupt", f"is not valid {coding} data ({text})")


def _truncated(coding: str) -> CodingError:
    return CodingError("truncated", f"ends before its {coding} data does (truncated)")


def _gunzip(data: bytes, limit: int, partial: bool) -> bytes:
    return _inflate("gzip", data, 16 + zlib.MAX_WBITS, limit, partial, members=True)


def _deflate(data: bytes, limit: int, partial: bool) -> bytes:
    # RFC 9110 says zlib format; some servers send raw deflate, which browsers accept.
    wbits = zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS
    return _inflate("deflate", data, wbits, limit, partial, members=False)


def _zlib_header(data: bytes) -> bool:
    """A zlib stream starts with method 8 (deflate), a window of at most 32 KiB and a
    check: the first two bytes, big-endian, are a multiple of 31 (RFC 1950)."""
    if len(data) < 2:
        return False
    method, window = data[0] & 0x0F, data[0] >> 4
    return method == 8 and window <= 7 and ((data[0] << 8) | data[1]) % 31 == 0


def _inflate(
    coding: str, data: bytes, wbits: int, limit: int, partial: bool, *, members: bool
) -> bytes:
    out = _Output(coding, limit)
    view = memoryview(data)
    position = 0
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            position = _feed(inflater, view, position, out)
            if not inflater.eof:
                if partial:
                    return out.result()
                raise _truncated(coding)
            # gzip allows members back to back; zero padding after the last is common.
            if not members or data.count(0, position) == len(data) - position:
                return out.result()
    except zlib.error as exc:
        raise _corrupt(coding, exc) from None


def _feed(inflater: Any, view: memoryview, position: int, out: _Output) -> int:
    """Feed ``view`` from ``position`` a step at a time (so the unconsumed input zlib
    copies per call stays small) until the stream ends; returns where it ended."""
    while position < len(view):
        piece = view[position : position + STEP_BYTES]
        position += len(piece)
        pending: bytes | memoryview = piece
        while True:
            room = out.room
            chunk = inflater.decompress(pending, room)
            out.add(chunk)
            if inflater.eof:
                return position - len(inflater.unused_data)
            pending = inflater.unconsumed_tail
            if not pending and len(chunk) < room:
                break  # this piece used up and all its output taken
    return position


def _unbrotli(data: bytes, limit: int, partial: bool) -> bytes:
    brotli = _library("br", "brotli", "brotli")
    out = _Output("br", limit)
    decompressor = brotli.Decompressor()
    try:
        out.add(decompressor.process(data, output_buffer_limit=out.room))
        while not decompressor.is_finished():
            chunk = decompressor.process(b"", output_buffer_limit=out.room)
            if not chunk:
                break  # it needs input there is not
            out.add(chunk)
        finished = decompressor.is_finished()
    except brotli.error as exc:
        raise _corrupt("br", exc) from None
    if not finished and not partial:
        raise _truncated("br")
    return out.result()


def _unzstd(data: bytes, limit: int, partial: bool) -> bytes:
    zstd = _library("zstd", "compression.zstd", "backports.zstd")
    out = _Output("zstd", limit)
    pending = data
    options = {zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
    try:
        while True:
            decompressor = zstd.ZstdDecompressor(options=options)
            chunk = decompressor.decompress(pending, out.room)
            out.add(chunk)
            while not decompressor.eof and not decompressor.needs_input:
                out.add(decompressor.decompress(b"", out.room))
            if not decompressor.eof:
                if partial:
                    return out.result()
                raise _truncated("zstd")
            pending = decompressor.unused_data
            if not pending:  # frames may follow each other: one body
                return out.result()
    except zstd.ZstdError as exc:
        if "too much memory" in str(exc):
            raise CodingError(
                "too_large", "needs a zstd window over 8 MiB, more than HTTP allows (RFC 9659)"
            ) from None
        raise _corrupt("zstd", exc) from None


def _library(coding: str, *modules: str) -> Any:
    """The first of ``modules`` that imports; else the pair cannot be decoded, and says why."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise CodingError(
        "unsupported",
        f"is {coding}-encoded and decoding {coding} needs the {modules[-1]} package, "
        "which is not installed (the compression extra)",
    )


_DECODERS: dict[str, Callable[[bytes, int, bool], bytes]] = {
    "gzip": _gunzip,
    "deflate": _deflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}
SUPPORTED: tuple[str, ...] = ("gzip", "x-gzip", "deflate", "br", "zstd", "identity")
