"""``shadowproxy serve`` with recording replaced by a sink that discards every pair.

The benchmarks' "recording off" system: the same serving path, config and event loop as
``python -m shadowproxy serve``, so the difference between the two is what recording
costs (once the recorder is wired into ``serve``)::

    python benchmarks/serve_without_recording.py --config bench.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shadowproxy.app import DiscardSink, serve
from shadowproxy.cli import run
from shadowproxy.config import Config, load_config
from shadowproxy.metrics import Metrics


class Discard(DiscardSink):
    """Discards pairs and feedback alike."""

    def submit_feedback(self, items: Sequence[object]) -> bool:
        return True


def discard(config: Config, metrics: Metrics) -> Discard:
    return Discard()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="main YAML file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(serve(load_config(args.config), sink_factory=discard))
    return 0


if __name__ == "__main__":
    sys.exit(main())
