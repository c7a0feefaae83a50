"""Merge the Prometheus expositions of several worker processes into one.

With ``--workers N`` every worker keeps its own registry (and its writer process its
own); the supervisor scrapes them all and serves one exposition, so dashboards and
alerts read the same series as with one worker. Counters and histograms add up.
Gauges mostly add up too (requests in flight, records pending); the ones that are
flags or facts rather than amounts take the maximum, so a breaker open in any worker
shows as open and an info series stays 1.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

# Gauges (and a counter) whose meaning is "any worker", not "all workers together".
TAKE_MAX = frozenset(
    {
        "shadowproxy_shadow_circuit_open",
        "shadowproxy_shadow_info",
        "shadowproxy_recorder_degraded",
        "shadowproxy_config_reloads",
        "shadowproxy_config_last_reload_successful",
        "shadowproxy_config_last_reload_success_timestamp_seconds",
    }
)

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Family:
    __slots__ = ("documentation", "name", "samples", "type")

    def __init__(self, name: str, type_: str, documentation: str) -> None:
        self.name = name
        self.type = type_
        self.documentation = documentation
        self.samples: dict[SampleKey, float] = {}


CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def merge_expositions(texts: Iterable[str], *, cumulative_only: bool = False) -> str:
    """One exposition (text format 0.0.4) holding every worker's series, merged.

    ``cumulative_only`` keeps counters and histograms only: what a dead worker leaves
    behind (its gauges described a process that is gone)."""
    families: dict[str, _Family] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if cumulative_only and family.type not in CUMULATIVE:
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = _Family(
                    family.name, family.type, family.documentation
                )
            take_max = family.name in TAKE_MAX
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # per-process creation times: meaningless once merged
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = merged.samples.get(key)
                value = float(sample.value)
                if old is None:
                    merged.samples[key] = value
                elif take_max:
                    merged.samples[key] = max(old, value)
                else:
                    merged.samples[key] = old + value
    return "".join(_render(family) for family in families.values())


def _render(family: _Family) -> str:
    kind = "untyped" if family.type == "unknown" else family.type
    # As prometheus_client writes it: a counter's family is named by its sample.
    name = f"{family.name}_total" if kind == "counter" else family.name
    lines = [
        f"# HELP {name} {_escape_help(family.documentation)}",
        f"# TYPE {name} {kind}",
    ]
    for (name, labels), value in family.samples.items():
        if labels:
            text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels)
            lines.append(f"{name}{{{text}}} {_number(value)}")
        else:
            lines.append(f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) + ".0" if value.is_integer() and abs(value) < 2**53 else repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class WorkerExpositions:
    """The workers' latest expositions, kept so merged counters never go down.

    Prometheus reads a counter that drops as a reset and counts everything after it as
    new increase. A worker's counters would drop out of the sum when one scrape of it
    fails (its last exposition is used instead) and when it restarts from zero (the
    dead process's counters and histograms are kept as a retired part of the sum).
    """

    def __init__(self) -> None:
        self._latest: dict[int, tuple[int | None, str]] = {}
        self._retired = ""

    def update(self, worker: int, pid: int | None, text: str | None) -> None:
        """``text`` None: the scrape failed; the last one stands in for it."""
        if text is None:
            return
        previous = self._latest.get(worker)
        if previous is not None and previous[0] != pid:
            self._retired = merge_expositions([self._retired, previous[1]], cumulative_only=True)
        self._latest[worker] = (pid, text)

    def merged(self, *extra: str) -> str:
        texts = [text for _, text in self._latest.values()]
        return merge_expositions([self._retired, *texts, *extra])
