"""Unmap the library pages the writer touched while starting and no longer uses.

Starting touches far more library code than serving runs: static initialisers spread
over a library, code run once (opening an S3 client), and every page fault maps the
pages around it too. Importing pyarrow and opening an S3 filesystem leave about 60 MiB
of libarrow, libarrow_s3 (the AWS SDK), libparquet and their kin mapped in the writer,
though writing files runs a third of them. They stay mapped, and counted in the
process's PSS.

``unmap_clean_library_pages`` drops this process's mappings of such pages: file-backed,
read-only, never written (no anonymous or dirty page in the mapping), so the kernel
refills any of them from the file on the next access (``MADV_DONTNEED``): a minor
fault per page still in use while the file is in the page cache, a read from disk if
the kernel has evicted it. This lowers the process's PSS and working set, not what the
files occupy in the page cache. A mapping that holds a written page (relocations,
data) is left whole. Linux only; elsewhere, or if anything fails, nothing is dropped.

Only the writer calls it, off the production path. The proxy does not: its saving
would be about 4 MiB (pydantic-core), and the code that serves production would pay
the refills, and a disk read under memory pressure, on its requests.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
WRITTEN = ("Anonymous", "Private_Dirty", "Shared_Dirty", "Swap")
"""Fields of a mapping whose being non-zero means it holds a page that is not the file's."""


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kib: int = 0
    written_kib: int = 0
    locked: bool = False

    @property
    def droppable(self) -> bool:
        """Refillable from its file exactly as it is, and worth dropping."""
        return (
            self.path.startswith("/")
            and "w" not in self.perms
            and not self.written_kib
            and not self.locked
            and self.rss_kib > 0
        )


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of ``/proc/<pid>/smaps``, with their resident and written KiB."""
    mappings: list[Mapping] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            mappings.append(Mapping(start, end, fields[1], path))
        elif mappings and fields[0].rstrip(":") == "Rss":
            mappings[-1].rss_kib = int(fields[1])
        elif mappings and fields[0].rstrip(":") in WRITTEN:
            mappings[-1].written_kib += int(fields[1])
        elif mappings and fields[0] == "VmFlags:":
            mappings[-1].locked = "lo" in fields[1:]
    return mappings


def unmap_clean_library_pages() -> int:
    """Drop this process's clean, read-only file mappings' pages; KiB dropped."""
    if sys.platform != "linux":
        return 0
    try:
        with open("/proc/self/smaps") as smaps:
            mappings = parse_smaps(smaps.read())
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError) as exc:
        log.debug("pages: not unmapping library pages: %s", exc)
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    dropped = 0
    for mapping in mappings:
        if mapping.droppable:
            length = mapping.end - mapping.start
            if madvise(mapping.start, length, MADV_DONTNEED) == 0:
                dropped += mapping.rss_kib
    return dropped
