"""What the writer process keeps out of memory: numpy, the dataset module, unencoded rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from shadowproxy.config import RecordingConfig
from shadowproxy.metrics import Metrics
from shadowproxy.recording.storage import Storage
from shadowproxy.recording.writer import Writer
from tests.test_recording import make_pair, make_route

PROBE = """
import sys
from shadowproxy.recording.child import lean_arrow
lean_arrow()
import shadowproxy.recording.recorder
import pyarrow.parquet
print(sys.modules.get("numpy") is not None, "pyarrow.dataset" in sys.modules)
"""


def test_the_writer_loads_neither_numpy_nor_the_dataset_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_rows_are_encoded_in_row_groups_of_an_eighth_of_the_buffer(tmp_path: Path) -> None:
    """A file open for long (a fleet's flush interval) keeps only one group unencoded."""
    settings = RecordingConfig(dir=str(tmp_path), max_buffer_bytes=8 * 1024 * 1024)
    writer = Writer(
        Storage(settings.dir),
        settings,
        [make_route()],
        Metrics(CollectorRegistry()),
        None,
        lambda: 0.0,
    )
    body = bytes(range(256)) * 16  # 4 KiB, three a row: 12 MiB in all, 1 MiB groups
    writer.take([make_pair(n, body=body, prod_body=body, shadow_body=body) for n in range(1000)])
    writer.rotate(everything=True)
    writer.write_due()
    [path] = list(tmp_path.rglob("*.parquet"))
    metadata = pq.read_metadata(path)
    assert metadata.num_rows == 1000
    # Rows become Arrow batches 2 MiB at a time, and a group closes after the batch
    # that fills it: six groups, where 64 MiB groups would make one.
    assert metadata.num_row_groups >= 5
