"""The ``compare:`` block: defaults, config errors through ``load_config`` (file + field
path + message), ``describe`` for ``/routes``, ``Comparer`` routing and its ``auto``
tally, and the package staying pure (no aiohttp)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shadowproxy.compare import KINDS, PRESETS, CompareConfig, Comparer, describe
from shadowproxy.config import RouteConfig, load_config
from shadowproxy.errors import ConfigError
from shadowproxy.records import Pair, ProductionResult, RequestInfo, ShadowResult

ROUTE: dict[str, Any] = {
    "name": "price",
    "match": {"path_prefix": "/v1/models/price"},
    "production": {"url": "http://127.0.0.1:8001"},
    "shadows": [{"name": "v2", "url": "http://127.0.0.1:8002"}],
}


def write_config(tmp_path: Path, compare: Any, *, inline: bool = False) -> tuple[Path, Path]:
    """A main file and one route carrying ``compare``; returns (main file, route file)."""
    route = dict(ROUTE, compare=compare)
    main = tmp_path / "shadowproxy.yaml"
    if inline:
        main.write_text(yaml.safe_dump({"routes": [route]}))
        return main, main
    (tmp_path / "routes").mkdir()
    route_file = tmp_path / "routes" / "price.yaml"
    route_file.write_text(yaml.safe_dump(route))
    main.write_text(yaml.safe_dump({"routes_dir": "routes"}))
    return main, route_file


def config_error(tmp_path: Path, compare: Any, *, inline: bool = False) -> tuple[str, ConfigError]:
    main, source = write_config(tmp_path, compare, inline=inline)
    with pytest.raises(ConfigError) as caught:
        load_config(main, environ={})
    return str(source), caught.value


def test_a_route_without_compare_gets_the_defaults(tmp_path: Path) -> None:
    main, _ = write_config(tmp_path, None)
    (tmp_path / "routes" / "price.yaml").write_text(yaml.safe_dump(ROUTE))
    compare = load_config(main, environ={}).routes[0].compare
    assert compare == CompareConfig()
    assert (compare.prediction, compare.kind, compare.path) == ("raw", "auto", "$")


def test_a_full_compare_block_loads(tmp_path: Path) -> None:
    ignore = ["$.id", "$.model_version", "$.outputs[*].parameters"]
    block: dict[str, Any] = {
        "prediction": "open-inference",
        "output": "probabilities",
        "kind": "probabilities",
        "ignore": ignore,
        "max_js": 0.05,
        "abs_tol": 0,
        "rel_tol": 0.001,
        "min_similarity": 0.9,
        "top_k": 20,
        "min_overlap": 0.8,
        "rbo_p": 0.95,
        "min_cosine": 0.95,
    }
    main, _ = write_config(tmp_path, block)
    compare = load_config(main, environ={}).routes[0].compare
    assert compare.model_dump() == dict(block, ignore=tuple(ignore))


@pytest.mark.parametrize("prediction", [*PRESETS, "$", "$.predictions", "$.outputs[0].data",
                                        "$.choices[*].message.content", "$['a b'][-1]"])  # fmt: skip
def test_every_preset_and_path_is_accepted(prediction: str) -> None:
    assert CompareConfig(prediction=prediction).prediction == prediction


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_accepted(kind: str) -> None:
    assert CompareConfig.model_validate({"kind": kind}).kind == kind


@pytest.mark.parametrize(
    ("compare", "field", "message"),
    [
        ({"prediction": "kserve"}, "compare.prediction",
         ("unknown preset 'kserve' (did you mean 'kserve-v1'?); use a JSON path starting with '$' "
          "(e.g. '$.predictions') or one of: raw, kserve-v1, tfserving, mlflow, open-inference, "
          "openai-chat, openai-completions, openai-embeddings")),
        ({"prediction": "openai-embedding"}, "compare.prediction",
         "unknown preset 'openai-embedding' (did you mean 'openai-embeddings'?)"),
        ({"prediction": "predictions"}, "compare.prediction", "unknown preset 'predictions'"),
        ({"prediction": "$.outputs[x]"}, "compare.prediction",
         "JSON path '$.outputs[x]': unexpected '[' at position 9 (supported: .key, ['key'], [N], [*])"),
        ({"prediction": "$."}, "compare.prediction", "JSON path '$.': expected a key after '.' at position 1"),
        ({"kind": "numerc"}, "compare.kind",
         ("unknown comparator 'numerc' (did you mean 'numeric'?); one of: auto, exact, numeric, "
          "label, probabilities, ranking, text, embedding")),
        ({"kind": "embeddings"}, "compare.kind", "unknown comparator 'embeddings' (did you mean 'embedding'?)"),
        ({"kind": "fuzzy"}, "compare.kind", "unknown comparator 'fuzzy'; one of: auto,"),
        ({"ignore": ["$.id", "id"]}, "compare.ignore[1]", "JSON path must start with '$', got 'id'"),
        ({"ignore": ["$"]}, "compare.ignore[0]", "must name a field below the root '$', got '$'"),
        ({"ignore": "$.id"}, "compare.ignore", "input should be a valid tuple"),
        ({"output": "probs"}, "compare.output",
         "only applies to prediction: open-inference, but prediction is 'raw'"),
        ({"prediction": "kserve-v1", "output": "probs"}, "compare.output",
         "only applies to prediction: open-inference, but prediction is 'kserve-v1'"),
        ({"abs_tol": -1}, "compare.abs_tol", "must be at least 0, got -1"),
        ({"rel_tol": float("inf")}, "compare.rel_tol", "input should be a finite number"),
        ({"min_similarity": 1.5}, "compare.min_similarity", "must be at most 1, got 1.5"),
        ({"max_js": -0.1}, "compare.max_js", "must be at least 0, got -0.1"),
        ({"min_overlap": 2}, "compare.min_overlap", "must be at most 1, got 2"),
        ({"top_k": 0}, "compare.top_k", "must be at least 1, got 0"),
        ({"top_k": 5000}, "compare.top_k", "must be at most 1000, got 5000"),
        ({"rbo_p": 1}, "compare.rbo_p", "must be less than 1, got 1"),
        ({"min_cosine": 1.01}, "compare.min_cosine", "must be at most 1, got 1.01"),
        ({"min_cosine": -2}, "compare.min_cosine", "must be at least -1, got -2"),
        ({"min_cosine": float("nan")}, "compare.min_cosine", "input should be a finite number"),
        ({"kinds": "exact"}, "compare.kinds", "unknown key (did you mean 'kind'?); allowed: abs_tol,"),
        ("exact", "compare", "input should be a valid dictionary or instance of CompareConfig"),
    ],
)  # fmt: skip
def test_config_errors_name_the_file_and_the_field(
    tmp_path: Path, compare: Any, field: str, message: str
) -> None:
    source, error = config_error(tmp_path, compare)
    assert (error.file, error.field) == (source, field)
    assert error.message.startswith(message), error.message
    assert str(error).startswith(f"{source}: {field}: ")


def test_inline_routes_say_which_route(tmp_path: Path) -> None:
    source, error = config_error(tmp_path, {"prediction": "tf-serving"}, inline=True)
    assert (error.file, error.field) == (source, "routes[0].compare.prediction")
    assert "did you mean 'tfserving'?" in error.message


# --- describe -----------------------------------------------------------------------------


def test_describe_auto_shows_the_rule_and_the_candidates() -> None:
    summary = describe(CompareConfig(prediction="kserve-v1", ignore=("$.id",)))
    assert summary["prediction"] == "kserve-v1"
    assert summary["preset"] == "kserve-v1"
    assert summary["path"] == "$.predictions"
    assert summary["ignore"] == ["$.id"]
    rule = summary["auto_rule"]
    assert isinstance(rule, list)
    assert any("probabilities" in line for line in rule)
    comparators = summary["comparators"]
    assert isinstance(comparators, dict)
    assert set(comparators) == {"exact", "numeric", "label", "probabilities", "text"}
    orjson.dumps(summary)  # JSON-ready for /routes


@pytest.mark.parametrize(
    ("config", "agree", "options"),
    [
        (CompareConfig(kind="numeric", abs_tol=0.01), "every element |a-b| <= max(rel_tol * max(|a|,|b|), abs_tol)",
         {"abs_tol": 0.01, "rel_tol": 1e-6}),
        (CompareConfig(kind="probabilities", max_js=0.1), "same top-1 class and JS divergence <= 0.1", {"max_js": 0.1}),
        (CompareConfig(kind="ranking", top_k=5), "top-5 overlap >= 1.0", {"top_k": 5, "min_overlap": 1.0, "rbo_p": 0.9}),
        (CompareConfig(kind="text", min_similarity=0.7), "token similarity >= 0.7", {"min_similarity": 0.7}),
        (CompareConfig(kind="label"), "same class (a label, or the argmax of a score vector)", None),
        (CompareConfig(kind="exact"), "equal JSON (key order ignored, 1 == 1.0, NaN == NaN)", None),
        (CompareConfig(kind="embedding", min_cosine=0.9), "cosine similarity >= 0.9 (base64 float32 or number arrays)",
         {"min_cosine": 0.9}),
    ],
)  # fmt: skip
def test_describe_states_agree_with_the_route_thresholds(
    config: CompareConfig, agree: str, options: dict[str, Any] | None
) -> None:
    summary = describe(config)
    assert (summary["kind"], summary["agree"], summary.get("options")) == (
        config.kind,
        agree,
        options,
    )
    assert "diff_score" in summary
    assert "auto_rule" not in summary


def test_describe_says_the_embeddings_preset_picks_the_comparator() -> None:
    summary = describe(CompareConfig(prediction="openai-embeddings", min_cosine=0.995))
    assert summary["auto"] == "embedding (the openai-embeddings preset decides)"
    assert summary["path"] == "$.data[*].embedding"
    assert summary["options"] == {"min_cosine": 0.995}
    assert "auto_rule" not in summary
    orjson.dumps(summary)


def test_describe_open_inference_names_the_output() -> None:
    assert describe(CompareConfig(prediction="open-inference"))["output"] == "(the first output)"
    assert describe(CompareConfig(prediction="$.y"))["path"] == "$.y"
    assert "preset" not in describe(CompareConfig(prediction="$.y"))


# --- Comparer -------------------------------------------------------------------------------


def route(name: str, **compare: Any) -> RouteConfig:
    return RouteConfig.model_validate(
        dict(ROUTE, name=name, match={"path_prefix": f"/{name}"}, compare=compare)
    )


def pair_for(route_name: str, prod: Any, shadow: Any) -> Pair:
    request = RequestInfo(
        request_id="r",
        ts=0.0,
        route=route_name,
        method="POST",
        path="/p",
        query="",
        headers=[],
        body=b"{}",
        body_complete=True,
    )
    return Pair(
        request=request,
        shadow="v2",
        role="candidate",
        production=ProductionResult(
            status=200,
            latency_ms=1.0,
            error=None,
            body=orjson.dumps(prod),
            body_truncated=False,
            content_type="application/json",
        ),
        result=ShadowResult(
            outcome="ok",
            status=200,
            latency_ms=1.0,
            error=None,
            body=orjson.dumps(shadow),
            body_truncated=False,
            content_type="application/json",
        ),
    )


def test_comparer_uses_each_routes_config() -> None:
    comparer = Comparer(
        [route("price", prediction="mlflow", kind="numeric", abs_tol=1.0), route("chat", prediction="openai-chat")]
    )  # fmt: skip
    price = comparer(pair_for("price", {"predictions": [100.0]}, {"predictions": [100.5]}))
    assert (price.comparator, price.agree, price.diff_score) == ("numeric", True, 0.5)
    chat = {"choices": [{"message": {"content": "Hello there, how are you?"}}]}
    answer = comparer(pair_for("chat", chat, chat))
    assert (answer.comparator, answer.agree) == ("auto:text", True)


def test_comparer_compares_unknown_routes_with_the_defaults() -> None:
    comparer = Comparer([route("price", prediction="mlflow")])
    result = comparer(pair_for("default", {"a": 1}, {"a": 2}))
    assert (result.comparator, result.agree, result.detail) == ("auto:exact", False, "a: 1 vs 2")


def test_comparer_tallies_what_auto_picked_per_route() -> None:
    comparer = Comparer([route("price", prediction="kserve-v1"), route("fixed", kind="exact")])
    comparer(pair_for("price", {"predictions": [1.5]}, {"predictions": [1.5]}))
    comparer(pair_for("price", {"predictions": [1.5]}, {"predictions": [1.5]}))
    comparer(pair_for("price", {"predictions": ["cat"]}, {"predictions": ["dog"]}))
    comparer(pair_for("price", {"nothing": 1}, {"predictions": [1]}))  # not picked: no prediction
    comparer(pair_for("fixed", {"a": 1}, {"a": 1}))  # not auto
    comparer(pair_for("other", [0.5, 0.5], [0.5, 0.5]))
    assert comparer.auto_choices() == {
        "price": {"numeric": 2, "label": 1},
        "other": {"probabilities": 1},
    }


def test_comparer_tally_is_thread_safe() -> None:
    comparer = Comparer([route("price", prediction="kserve-v1")])
    pair = pair_for("price", {"predictions": [1.5, 2.5]}, {"predictions": [1.5, 2.0]})

    def work() -> None:
        for _ in range(200):
            comparer(pair)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert comparer.auto_choices() == {"price": {"numeric": 800}}


# --- purity ---------------------------------------------------------------------------------


def test_the_compare_package_imports_without_aiohttp() -> None:
    code = (
        "import sys, shadowproxy.compare, shadowproxy.compare.comparators; "
        "assert 'aiohttp' not in sys.modules, sorted(m for m in sys.modules if 'aiohttp' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
