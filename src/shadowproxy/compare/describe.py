"""A route's comparison in words and numbers, for the admin ``/routes`` page.

Operators read this to answer "what does agree mean on this route?" without opening
the YAML, so each comparator states its rule with the route's own thresholds filled in.
"""

from __future__ import annotations

from collections.abc import Callable

from shadowproxy.compare import auto
from shadowproxy.compare.spec import OPEN_INFERENCE, PRESET_KINDS, PRESETS, CompareConfig

_Rule = Callable[[CompareConfig], dict[str, object]]


def _exact(config: CompareConfig) -> dict[str, object]:
    return {
        "agree": "equal JSON (key order ignored, 1 == 1.0, NaN == NaN)",
        "diff_score": "0 when equal, 1 when not",
    }


def _numeric(config: CompareConfig) -> dict[str, object]:
    return {
        "options": {"abs_tol": config.abs_tol, "rel_tol": config.rel_tol},
        "agree": "every element |a-b| <= max(rel_tol * max(|a|,|b|), abs_tol)",
        "diff_score": "largest absolute difference over all elements",
    }


def _label(config: CompareConfig) -> dict[str, object]:
    return {
        "agree": "same class (a label, or the argmax of a score vector)",
        "diff_score": "0 when every item has the same class, else 1",
    }


def _probabilities(config: CompareConfig) -> dict[str, object]:
    also = f" and JS divergence <= {config.max_js}" if config.max_js is not None else ""
    return {
        "options": {"max_js": config.max_js},
        "agree": f"same top-1 class{also}",
        "diff_score": "Jensen-Shannon divergence in bits, 0..1",
    }


def _ranking(config: CompareConfig) -> dict[str, object]:
    return {
        "options": {
            "top_k": config.top_k,
            "min_overlap": config.min_overlap,
            "rbo_p": config.rbo_p,
        },
        "agree": f"top-{config.top_k} overlap >= {config.min_overlap}",
        "diff_score": f"1 - rank-biased overlap of the top {config.top_k} (p={config.rbo_p})",
    }


def _text(config: CompareConfig) -> dict[str, object]:
    return {
        "options": {"min_similarity": config.min_similarity},
        "agree": f"token similarity >= {config.min_similarity}",
        "diff_score": "1 - similarity (mean of token unigram and bigram Dice), 0..1",
    }


def _embedding(config: CompareConfig) -> dict[str, object]:
    return {
        "options": {"min_cosine": config.min_cosine},
        "agree": f"cosine similarity >= {config.min_cosine} (base64 float32 or number arrays)",
        "diff_score": "1 - cosine similarity, 0..2",
    }


_RULES: dict[str, _Rule] = {
    "exact": _exact,
    "numeric": _numeric,
    "label": _label,
    "probabilities": _probabilities,
    "ranking": _ranking,
    "text": _text,
    "embedding": _embedding,
}
_NEVER_AUTO = ("ranking", "embedding")
"""Comparators ``auto`` never picks from the JSON types (only a preset picks ``embedding``)."""


def describe(config: CompareConfig) -> dict[str, object]:
    """JSON-ready summary of ``config``; for ``auto``, the rule and every candidate."""
    summary: dict[str, object] = {
        "prediction": config.prediction,
        "path": config.path,
        "kind": config.kind,
        "ignore": list(config.ignore),
        "batch": "an array prediction is a batch: items compared pairwise, "
        "agree = all items agree, diff_score = the largest item score",
    }
    if config.prediction in PRESETS:
        summary["preset"] = config.prediction
    if config.prediction == OPEN_INFERENCE:
        summary["output"] = config.output or "(the first output)"
    preset_kind = PRESET_KINDS.get(config.prediction)
    if config.kind == "auto" and preset_kind:
        summary["auto"] = f"{preset_kind} (the {config.prediction} preset decides)"
        summary.update(_RULES[preset_kind](config))
    elif config.kind == "auto":
        summary["auto_rule"] = list(auto.RULE)
        summary["comparators"] = {
            name: rule(config) for name, rule in _RULES.items() if name not in _NEVER_AUTO
        }
    else:
        summary.update(_RULES[config.kind](config))
    return summary
