"""Recording: every shadow decision becomes one row of a partitioned Parquet dataset.

::

    event loop                         writer thread (one)
    Recorder.submit(pair) ─► deque ─►  decode ─► redact ─► compare ─► rows ─► part file per
      (bounded, O(1), drops counted)                                         (route, UTC date)
                                                                                  │ sealed by rows,
                                                                                  ▼ age or shutdown
    <root>/pairs/route=<r>/date=<d>/<host>-<pid>-<token>-<seq>.parquet  (atomic, zstd)

Feedback (``submit_feedback``) and experiment exposures (``submit_exposure``) take the
same path without redaction or comparison, to ``feedback/`` and ``exposures/``.

``recorder`` holds the event-loop side and the thread, ``writer`` the thread's work,
``storage`` the layout, atomic writes and reading back; ``schema`` the rows,
``redact`` the redaction and ``decoding`` undoes compressed bodies (``Content-Encoding``)
first. By default the recorder
runs in a writer process (``process`` and ``child``, talking over ``wire``).

The exports load lazily: the serving process imports ``recording.process`` and must
not pay for Arrow, which only the writer needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowproxy.recording.recorder import Recorder
    from shadowproxy.recording.storage import read_dataset, read_exposures, read_feedback

__all__ = ["Recorder", "read_dataset", "read_exposures", "read_feedback"]


def __getattr__(name: str) -> Any:
    if name == "Recorder":
        from shadowproxy.recording.recorder import Recorder

        return Recorder
    if name in ("read_dataset", "read_exposures", "read_feedback"):
        from shadowproxy.recording import storage

        return getattr(storage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
