"""Dropping clean library pages: only pages the file can give back, and they come back."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import pytest

from shadowproxy.pages import parse_smaps, unmap_clean_library_pages

SMAPS = """\
7f0000000000-7f0000004000 r-xp 00000000 08:01 11 /usr/lib/libarrow.so
Rss:                  16 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
VmFlags: rd ex mr mw me
7f0000004000-7f0000005000 r--p 00004000 08:01 11 /usr/lib/libarrow.so
Rss:                   4 kB
Anonymous:             4 kB
Private_Dirty:         4 kB
VmFlags: rd mr mw me ac
7f0000005000-7f0000006000 rw-p 00005000 08:01 11 /usr/lib/libarrow.so
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd wr mr mw me ac
7f0000006000-7f0000008000 r--p 00000000 08:01 12 /usr/lib/locked.so
Rss:                   8 kB
VmFlags: rd mr mw me lo
7f0000008000-7f0000009000 r--p 00000000 08:01 13 /usr/lib/cold.so
Rss:                   0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  12 kB
Anonymous:            12 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
"""


def test_only_read_only_never_written_resident_file_pages_are_droppable() -> None:
    mappings = parse_smaps(SMAPS)
    assert [(m.path.rsplit("/", 1)[-1], m.rss_kib, m.droppable) for m in mappings] == [
        ("libarrow.so", 16, True),
        ("libarrow.so", 4, False),  # relocated: its written page exists nowhere else
        ("libarrow.so", 4, False),  # writable
        ("locked.so", 8, False),  # mlocked on purpose
        ("cold.so", 0, False),  # nothing resident
        ("[stack]", 12, False),
        ("[vdso]", 8, False),
    ]


def resident_kib(path: Path, perms: str) -> int:
    mappings = parse_smaps(Path("/proc/self/smaps").read_text())
    return sum(m.rss_kib for m in mappings if m.path == str(path) and m.perms == perms)


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps and MADV_DONTNEED")
def test_dropped_pages_read_back_from_the_file_and_written_ones_are_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.bin"
    content = bytes(range(256)) * 4096  # 1 MiB
    with path.open("wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())  # clean in the page cache, as a library's pages are
    with path.open("rb") as file:
        clean = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        private = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    with clean, private:
        assert clean[:] == content  # every page resident
        private[:5] = b"kept!"  # a page the file does not have
        assert resident_kib(path, "r--s") == 1024
        assert unmap_clean_library_pages() >= 1024
        assert resident_kib(path, "r--s") == 0
        assert resident_kib(path, "rw-p") > 0
        assert clean[:] == content
        assert private[:5] == b"kept!"
        assert private[5:] == content[5:]
