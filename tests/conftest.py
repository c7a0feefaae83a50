from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, settings

from shadowproxy.config import MainConfig, RecordingConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = (MainConfig.model_fields["state_dir"].default, RecordingConfig().dir)
"""Where a config that names no directory writes, relative to the working directory."""

Snapshot = tuple[tuple[str, int], ...] | None

# Property tests judge the code, not the machine: on a loaded 2-core runner input
# generation is slow and per-example timings jitter, which says nothing about a defect.
settings.register_profile(
    "shadowproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shadowproxy")


def _snapshot(path: Path) -> Snapshot:
    if not path.exists():
        return None
    return tuple(sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*")))


@pytest.fixture(autouse=True)
def _checkout_stays_clean() -> Iterator[None]:
    """Tests write under ``tmp_path``. A config's default directory (``state_dir``,
    ``recording.dir``) lands in the checkout the tests run from; the test that let it
    happen fails here, by name."""
    before = {name: _snapshot(REPO / name) for name in DEFAULT_DIRS}
    yield
    written = [name for name in DEFAULT_DIRS if _snapshot(REPO / name) != before[name]]
    assert not written, f"the test wrote {written} into {REPO}: give its config tmp_path dirs"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client that changes nothing it sends or receives."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
