"""ML-aware comparison of production's and a shadow's answers (pure: no I/O, no aiohttp).

How one recorded pair is judged::

    Pair ──► status / outcome checks ──► decode (JSON, NaN literals, SSE streams)
                                           │
             ignore paths deleted ◄────────┘
                  │
                  └─► extract the prediction (JSON path or preset) ──► serialise (record)
                                                                         │
             comparator (exact | numeric | label | probabilities | ranking | text |
                         embedding, or auto: picked from production's prediction) ◄─┘
                  │
                  └─► records.Comparison(agree, diff_score, detail, batch counts)

Modules follow that path: ``spec`` (the ``compare:`` config block), ``decode`` and
``sse``, ``extract``, one module per comparator family (``exact``, ``numeric``,
``label``, ``scores``, ``text``, ``embedding``), ``auto``, ``comparators`` (the registry),
``verdict`` (the batch rule), ``pairs`` (the pipeline) and ``describe`` (``/routes``);
``corrupt`` changes a shadow's answer for a chaos experiment, before comparison.
Every failure of the data is a reason in ``Comparison.detail``, never an exception.
"""

from shadowproxy.compare.describe import describe
from shadowproxy.compare.pairs import Comparer, compare
from shadowproxy.compare.spec import KINDS, PRESETS, CompareConfig, Kind

__all__ = ["KINDS", "PRESETS", "CompareConfig", "Comparer", "Kind", "compare", "describe"]
