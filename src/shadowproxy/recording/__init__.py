"""Recording: every shadow decision becomes one row of a partitioned Parquet dataset.

::

    event loop                         writer thread (one)
    Recorder.submit(pair) ─► deque ─►  redact ─► compare ─► rows ─► part file per
      (bounded, O(1), drops counted)                               (route, UTC date)
                                                                        │ sealed by rows,
                                                                        ▼ age or shutdown
    <root>/pairs/route=<r>/date=<d>/<host>-<pid>-<token>-<seq>.parquet  (atomic, zstd)

``recorder`` holds the event-loop side and the thread, ``writer`` the thread's work,
``storage`` the layout, atomic writes and reading back. The row schema lives in
``shadowproxy.records``; redaction in ``shadowproxy.redact``.
"""

from shadowproxy.recording.recorder import Recorder
from shadowproxy.recording.storage import read_dataset, read_feedback

__all__ = ["Recorder", "read_dataset", "read_feedback"]
