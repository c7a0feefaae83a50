from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shadowproxy.cli import main as cli_main
from shadowproxy.config import load_config, with_overrides
from shadowproxy.errors import ConfigError

GOOD_ROUTE = {
    "name": "price",
    "match": {"path_prefix": "/v1/models/price", "methods": ["post"]},
    "production": {"url": "http://127.0.0.1:8001", "timeout_s": 10},
    "shadows": [{"name": "v2", "url": "http://127.0.0.1:8002", "sample_rate": 0.5}],
}


def layout(tmp_path: Path, *routes: dict, **main: object) -> Path:  # type: ignore[type-arg]
    (tmp_path / "routes").mkdir(parents=True, exist_ok=True)
    for index, route in enumerate(routes):
        (tmp_path / "routes" / f"{index}-{route.get('name', 'x')}.yaml").write_text(
            yaml.safe_dump(route)
        )
    path = tmp_path / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump({"routes_dir": "routes", **main}))
    return path


def error_of(path: Path, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env)
    return caught.value


def test_full_example_config_in_the_repo_loads() -> None:
    config = load_config("config/shadowproxy.yaml", environ={})
    assert [route.name for route in config.routes] == ["house-price"]
    assert config.routes[0].shadows[0].name == "candidate-v2"
    assert config.main.default_upstream == "http://127.0.0.1:8001"


def test_good_config_defaults_and_normalisation(tmp_path: Path) -> None:
    config = load_config(layout(tmp_path, GOOD_ROUTE), environ={})
    route = config.routes[0]
    assert route.match.methods == ("POST",)
    assert route.max_body_bytes == 10 * 1024 * 1024
    assert route.shadows[0].max_in_flight == 64
    assert route.shadows[0].role == "candidate"
    assert config.main.listen == "127.0.0.1:8080"
    assert config.main.admin_listen == "127.0.0.1:9090"
    assert config.main.recording.flush_interval_s == 5
    assert config.route_sources[0].endswith("0-price.yaml")


def test_the_issue_example_error_message(tmp_path: Path) -> None:
    bad = {**GOOD_ROUTE, "shadows": [{**GOOD_ROUTE["shadows"][0], "sample_rate": 1.5}]}  # type: ignore[dict-item]
    error = error_of(layout(tmp_path, bad))
    assert str(error).endswith(
        "0-price.yaml: shadows[0].sample_rate: must be between 0 and 1, got 1.5"
    )
    assert error.field == "shadows[0].sample_rate"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"shadows": [{"name": "v2", "url": "http://h:1", "sampel_rate": 1}]},
         "shadows[0].sampel_rate", "did you mean 'sample_rate'"),
        ({"productoin": {"url": "http://h:1"}}, "productoin", "unknown key"),
        ({"production": {"url": "ftp://h"}}, "production.url", "http:// or https://"),
        ({"production": {"url": "http://h:1/base"}}, "production.url", "scheme://host[:port] only"),
        ({"production": {"url": "http://h:1", "timeout_s": -1}}, "production.timeout_s",
         "must be greater than 0, got -1"),
        ({"shadows": [{"name": "v2", "url": "http://h:1", "max_in_flight": 0}]},
         "shadows[0].max_in_flight", "must be at least 1"),
        ({"shadows": [{"name": "a b", "url": "http://h:1"}]}, "shadows[0].name", "letters, digits"),
        ({"match": {"path_prefix": "v1"}}, "match.path_prefix", "must start with '/'"),
        ({"match": {"path_prefix": "/v1", "methods": ["FETCH"]}}, "match.methods",
         "unknown HTTP method FETCH"),
        ({"shadows": [{"name": "a", "url": "http://h:1"}, {"name": "a", "url": "http://h:2"}]},
         "", "shadow name 'a' is used twice"),
        ({"production": None}, "production", "got None"),
    ],
)  # fmt: skip
def test_errors_name_the_field(tmp_path: Path, change: dict, field: str, message: str) -> None:  # type: ignore[type-arg]
    error = error_of(layout(tmp_path, {**GOOD_ROUTE, **change}))
    assert error.file is not None and error.file.endswith("0-price.yaml")
    assert (error.field or "") == field
    assert message in error.message, error.message


def test_a_canary_route_keeps_the_shadow_name_production_for_its_check(tmp_path: Path) -> None:
    shadows = [GOOD_ROUTE["shadows"][0], {"name": "production", "url": "http://h:1"}]  # type: ignore[index]
    canary = {
        **GOOD_ROUTE,
        "shadows": shadows,
        "mode": "canary",
        "canary": {"candidate": {"name": "v3", "url": "http://127.0.0.1:8003"}},
    }
    error = error_of(layout(tmp_path / "canary", canary))
    assert error.field == "shadows[1].name"
    assert error.message.startswith("'production' is reserved on canary routes"), error.message
    # Other routes may use the name.
    config = load_config(
        layout(tmp_path / "shadow", {**GOOD_ROUTE, "shadows": shadows}), environ={}
    )
    assert [shadow.name for shadow in config.routes[0].shadows] == ["v2", "production"]


def test_missing_required_key(tmp_path: Path) -> None:
    route = {key: value for key, value in GOOD_ROUTE.items() if key != "production"}
    error = error_of(layout(tmp_path, route))
    assert (error.field, error.message) == ("production", "required")


def test_duplicate_route_names_and_prefixes(tmp_path: Path) -> None:
    error = error_of(layout(tmp_path, GOOD_ROUTE, GOOD_ROUTE))
    assert error.field == "name" and "already used" in error.message
    other = {**GOOD_ROUTE, "name": "other"}
    error = error_of(layout(tmp_path / "b", GOOD_ROUTE, other))
    assert error.field == "match" and "POST" in error.message and "'price'" in error.message
    # Same prefix, disjoint methods: fine.
    get_route = {**other, "match": {"path_prefix": "/v1/models/price", "methods": ["GET"]}}
    assert len(load_config(layout(tmp_path / "c", GOOD_ROUTE, get_route), environ={}).routes) == 2


def test_environment_variables_are_expanded(tmp_path: Path) -> None:
    route = {**GOOD_ROUTE, "production": {"url": "${PROD_URL}", "timeout_s": 10}}
    path = layout(tmp_path, route, listen="${LISTEN:-0.0.0.0:80}")
    config = load_config(path, environ={"PROD_URL": "http://model:9000"})
    assert config.routes[0].production.url == "http://model:9000"
    assert config.main.listen == "0.0.0.0:80"
    error = error_of(path)
    assert error.field == "production.url" and "PROD_URL is not set" in error.message


def test_main_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "main.yaml"
    path.write_text("listen: [unclosed\n")
    assert "invalid YAML: line" in str(error_of(path))
    path.write_text("listen: nowhere\nroutes: []\ndefault_upstream: http://h:1\n")
    assert error_of(path).field == "listen"
    path.write_text("routes_dir: missing\n")
    assert "is not a directory" in str(error_of(path))
    path.write_text("listen: 127.0.0.1:1\n")
    assert "nothing to proxy" in str(error_of(path))
    assert "cannot read" in str(error_of(tmp_path / "absent.yaml"))


def test_inline_route_errors_point_into_the_main_file(tmp_path: Path) -> None:
    path = tmp_path / "main.yaml"
    bad = {**GOOD_ROUTE, "production": {"url": "http://h:1", "timeout_s": 0}}
    path.write_text(yaml.safe_dump({"routes": [bad]}))
    error = error_of(path)
    assert error.file == str(path) and error.field == "routes[0].production.timeout_s"


def test_overrides_are_validated(tmp_path: Path) -> None:
    config = load_config(layout(tmp_path, GOOD_ROUTE), environ={})
    assert with_overrides(config, listen="0.0.0.0:1234").main.listen == "0.0.0.0:1234"
    with pytest.raises(ConfigError, match="command line: listen"):
        with_overrides(config, listen="bogus")


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = layout(tmp_path, GOOD_ROUTE)
    assert cli_main(["validate", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "price: /v1/models/price (POST)" in out and "shadow v2" in out
    bad = layout(tmp_path / "bad", {**GOOD_ROUTE, "shadows": [{"name": "v2"}]})
    assert cli_main(["validate", "--config", str(bad)]) == 2
    assert "shadows[0].url: required" in capsys.readouterr().err


def test_shadow_rules_and_admin_token_are_validated(tmp_path: Path) -> None:
    shadow = {**GOOD_ROUTE["shadows"][0], "headers": {"drop": ["Bad Name"]}}  # type: ignore[index]
    error = error_of(layout(tmp_path, {**GOOD_ROUTE, "shadows": [shadow]}))
    assert error.field == "shadows[0].headers.drop" and "not a valid header name" in error.message
    shadow = {**GOOD_ROUTE["shadows"][0], "headers": {"set": {"X-A": "a\nb"}}}  # type: ignore[index]
    error = error_of(layout(tmp_path / "b", {**GOOD_ROUTE, "shadows": [shadow]}))
    assert "CR, LF or NUL" in error.message
    shadow = {**GOOD_ROUTE["shadows"][0], "methods": ["YEET"]}  # type: ignore[index]
    error = error_of(layout(tmp_path / "c", {**GOOD_ROUTE, "shadows": [shadow]}))
    assert error.field == "shadows[0].methods" and "YEET" in error.message
    error = error_of(layout(tmp_path / "d", GOOD_ROUTE, admin_token="${TOKEN:-}"))
    assert error.field == "admin_token" and "is empty" in error.message
    config = load_config(layout(tmp_path / "e", GOOD_ROUTE, admin_token="${TOKEN}"), {"TOKEN": "t"})
    assert config.main.admin_token == "t"
