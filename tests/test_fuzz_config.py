"""Fuzzing the config loader: whatever the files hold, ``load_config`` returns a ``Config``
or raises ``ConfigError`` naming the file and, when there is one, the field, spelled as
the loader spells paths (``routes[0].match.methods[1]``) and present in that file.

Three kinds of input: arbitrary YAML values (wrong types, unknown keys, odd key types,
``${`` references), YAML-ish text and bytes (tabs, tags, aliases, duplicate keys,
non-UTF-8), and a valid layout with one field changed, where the error must also point
near the change. ``SHADOWPROXY_FUZZ_EXAMPLES=5000`` runs a longer, random search.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import currently_in_test_context, event, given
from hypothesis import strategies as st
from pydantic import BaseModel

from shadowproxy.compare.spec import CompareConfig
from shadowproxy.config import Config, MainConfig, RouteConfig, load_config, with_overrides
from shadowproxy.errors import ConfigError
from tests.fuzzing import fuzz

ENV = {"HOST": "127.0.0.1", "PORT": "8001", "EMPTY": "", "TOKEN": "s3cret"}
UNREAD = object()
"""A file the test's own YAML parse rejects (so the loader must not name a field in it)."""

# --- a valid layout: main file, one inline route, two route files -------------------------

INLINE_ROUTE: dict[str, Any] = {
    "name": "inline",
    "match": {"path_prefix": "/inline", "methods": ["GET"]},
    "production": {"url": "http://127.0.0.1:8003"},
}
MAIN: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "admin_listen": "${HOST}:9090",
    "default_upstream": "http://${HOST}:${PORT}",
    "routes_dir": "routes",
    "routes": [INLINE_ROUTE],
    "recording": {"dir": "logs", "flush_interval_s": 5, "writer": "thread"},
    "upstream_pool": {"max_connections": 10, "keepalive_timeout_s": 2.5},
    "admin_token": "${TOKEN:-fallback}",
}
ROUTE_A: dict[str, Any] = {
    "name": "price",
    "match": {"path_prefix": "/v1/price", "methods": ["POST", "put"]},
    "production": {"url": "http://127.0.0.1:8001", "timeout_s": 10},
    "shadows": [
        {
            "name": "v2",
            "url": "${SHADOW_URL:-http://127.0.0.1:8002}",
            "sample_rate": 0.5,
            "sample_key": "user",
            "methods": ["post"],
            "circuit_breaker": {"failures": 3, "backoff_s": 1},
            "headers": {"drop": ["authorization"], "set": {"x-shadow": "1"}},
        }
    ],
    "record": {"bodies": True, "max_body_bytes": 100, "redact": ["$.email", "$.rows[*].ssn"]},
    "compare": {
        "prediction": "open-inference",
        "output": "probs",
        "kind": "probabilities",
        "ignore": ["$.id"],
        "max_js": 0.1,
    },
}
ROUTE_B: dict[str, Any] = {
    "name": "chat",
    "match": {"path_prefix": "/v1/chat"},
    "production": {"url": "https://127.0.0.1"},
    "shadows": [{"name": "small", "url": "http://127.0.0.1:8004", "role": "baseline"}],
    "compare": {"prediction": "openai-chat", "kind": "text", "min_similarity": 0.5},
}


def _field_names(model: type[BaseModel], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        seen.add(name)
        for inner in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                _field_names(inner, seen)


_NAMES: set[str] = set()
for _model in (MainConfig, RouteConfig, CompareConfig):
    _field_names(_model, _NAMES)
FIELD_NAMES = sorted(_NAMES)
"""Every key the loader knows, so arbitrary documents reach past "unknown key"."""

# --- strategies -------------------------------------------------------------------------

NEAR_VALID_STRINGS = [
    "http://127.0.0.1:8001", "https://h", "http://h:99999", "http://[::1", "ftp://h",
    "127.0.0.1:8080", "h:²", ":80", "/v1", "v1", "POST", "get", "BREW", "$.predictions",
    "$[", "$", "open-inference", "raw", "auto", "numeric", "nope", "candidate", "thread",
    "process", "routes", "a" * 70, "", " ", "2001-13-01", "1e999",
]  # fmt: skip
ENV_STRINGS = [
    "${", "${X", "${X:-", "${X}", "${HOST}", "${HOST:-x}", "${UNSET:-http://127.0.0.1:9}",
    "${1X}", "$HOST", "http://${HOST}:${PORT}", "${X:-${Y}}", "${EMPTY}", "}", "$${HOST}",
]  # fmt: skip

strings = (
    st.text(max_size=12)
    | st.sampled_from(NEAR_VALID_STRINGS)
    | st.sampled_from(ENV_STRINGS)
    | st.lists(st.sampled_from([*ENV_STRINGS, "a", ":", "/"]), max_size=4).map("".join)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.sampled_from([0, -1, 1, 65536, 2**63, 10**400])
    | st.floats()
    | strings
)
keys = (
    st.sampled_from(FIELD_NAMES)
    | st.text(max_size=8)
    | st.integers(-2, 404)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)
mappings = st.dictionaries(keys, values, max_size=8)


def documents(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly mappings, most of them ``base`` with keys overwritten or added, so the
    loader gets past "must be a mapping" and "required" to the values."""
    merged = mappings.map(lambda extra: {**base, **extra})
    return st.one_of(mappings, merged, merged, merged, values)


TOKENS = [
    "\t", "  ", "\n", ": ", "- ", "? ", "&a ", "*a", "*b", "!!int ", "!!float ", "!!bool ",
    "!!binary ", "!!timestamp ", "!!str ", "!!map ", "!!seq ", "!!set ", "!!omap ",
    "!!python/object:os.system ", "<<: ", "{", "}", "[", "]", ",", "'", '"', "\\", "#",
    "%YAML 1.1\n", "---\n", "...\n", "|", ">", "~", "null", "true", ".nan", ".inf",
    "-.inf", "0x1F", "0o17", "1_000", "1e3", "2001-13-01", "2001-02-29",
    "${", "${X:-", "${HOST}", "\ufeff", "\x00", "\u2028", "\ud800",
    "listen", "routes_dir", "routes", "name", "match", "path_prefix", "url",
]  # fmt: skip
yaml_ish_text = st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=30).map("".join)
yaml_ish_bytes = yaml_ish_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
raw_bytes = (
    yaml_ish_bytes
    | st.binary(max_size=64)
    | st.tuples(yaml_ish_bytes, st.binary(min_size=1, max_size=3), yaml_ish_bytes).map(b"".join)
    | st.sampled_from([b"x: 9", b"drain_timeout_s: 1"]).map(lambda head: head + b"0" * 5000)
)


@st.composite
def dumped(draw: st.DrawFn, document: Any) -> bytes:
    """``document`` as YAML text, with at most one textual edit (an inserted token, a
    duplicated line: a duplicate key in block style)."""
    text = yaml.safe_dump(
        document,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, True, None])),
    )
    edit = draw(st.sampled_from(["none", "none", "token", "duplicate"]))
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    if edit == "token":
        lines.insert(at, draw(st.sampled_from(TOKENS)))
    elif edit == "duplicate" and lines:
        lines.insert(at, lines[min(at, len(lines) - 1)])
    return "".join(lines).encode("utf-8", "surrogatepass")


# --- the property -----------------------------------------------------------------------


def parsed(data: bytes) -> Any:
    """The file as the test reads it (PyYAML's safe loader), or ``UNREAD``."""
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except Exception:
        return UNREAD


def places(doc: Any, path: str = "", parents: frozenset[int] = frozenset()) -> Iterator[str]:
    """Every path inside ``doc``, spelled as the loader spells fields."""
    if isinstance(doc, dict | list):
        if id(doc) in parents:
            return
        parents = parents | {id(doc)}
    if isinstance(doc, dict):
        for key, item in doc.items():
            inner = f"{path}.{key}" if path else str(key)
            yield inner
            yield from places(item, inner, parents)
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            inner = f"{path}[{index}]"
            yield inner
            yield from places(item, inner, parents)


def load_checked(main: Path, files: dict[str, bytes]) -> Config | ConfigError:
    """Load; on success check the config's invariants, on failure what the error names."""
    try:
        config = load_config(main, environ=ENV)
    except ConfigError as error:
        count("ConfigError " + ("with a field" if error.field else "without a field"))
        check_error(error, main, files)
        return error
    count("loaded")
    check_config(config, main)
    return config


def count(what: str) -> None:
    """For ``--hypothesis-show-statistics``: how far into the loader the inputs get."""
    if currently_in_test_context():
        event(what)


def check_error(error: ConfigError, main: Path, files: dict[str, bytes]) -> None:
    assert error.file is not None and error.message
    assert str(error).startswith(f"{error.file}: ")
    # A fuzzed routes_dir may name any directory: its files are read too.
    assert error.file == str(main) or error.file.endswith((".yaml", ".yml")), error
    if error.field is None or error.file not in files:
        return
    assert f"{error.file}: {error.field}: " in str(error)
    doc = parsed(files[error.file])
    assert doc is not UNREAD, f"a field in a file that is not YAML: {error}"
    found = {"", *places(doc)}
    parent = error.field.rpartition(".")[0]
    assert error.field in found or (error.message == "required" and parent in found), error


def check_config(config: Config, main: Path) -> None:
    assert config.source == str(main)
    assert len(config.routes) == len(config.route_sources)
    names = [route.name for route in config.routes]
    assert len(set(names)) == len(names)
    claims = [
        (route.match.path_prefix, method)
        for route in config.routes
        for method in route.match.methods or (None,)
    ]
    assert len(set(claims)) == len(claims)
    assert config.routes or config.main.default_upstream is not None
    # Command-line overrides re-validate the dumped main file: what loaded must pass again.
    assert MainConfig.model_validate(config.main.model_dump()) == config.main
    assert with_overrides(config, listen="127.0.0.1:1").main.listen == "127.0.0.1:1"


def write_layout(directory: Path, contents: dict[str, bytes]) -> tuple[Path, dict[str, bytes]]:
    """Write ``{relative name: bytes}``; return the main file and ``{path: bytes}``."""
    files: dict[str, bytes] = {}
    for name, data in contents.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[str(path)] = data
    return directory / "main.yaml", files


def yaml_bytes(document: Any) -> bytes:
    return yaml.safe_dump(document, sort_keys=False).encode()


def run(contents: dict[str, bytes]) -> Config | ConfigError:
    with tempfile.TemporaryDirectory() as directory:
        main, files = write_layout(Path(directory), contents)
        return load_checked(main, files)


GOOD = {
    "main.yaml": yaml_bytes(MAIN),
    "routes/a.yaml": yaml_bytes(ROUTE_A),
    "routes/b.yml": yaml_bytes(ROUTE_B),
}


def test_the_fuzzed_layout_is_valid() -> None:
    config = run(GOOD)
    assert isinstance(config, Config)
    assert [route.name for route in config.routes] == ["inline", "price", "chat"]
    assert config.main.admin_listen == "127.0.0.1:9090"
    assert config.routes[1].shadows[0].url == "http://127.0.0.1:8002"


# --- arbitrary documents and bytes ------------------------------------------------------


@fuzz(120)
@given(document=documents(MAIN), data=st.data())
def test_any_main_file_loads_or_is_a_config_error(document: Any, data: st.DataObject) -> None:
    run({**GOOD, "main.yaml": data.draw(dumped(document))})


@fuzz(100)
@given(document=documents({**ROUTE_B, "name": "c", "match": {"path_prefix": "/c"}}), data=st.data())
def test_any_route_file_loads_or_is_a_config_error(document: Any, data: st.DataObject) -> None:
    run({**GOOD, "routes/c.yaml": data.draw(dumped(document))})


@fuzz(150)
@given(data=raw_bytes, where=st.sampled_from(["main.yaml", "routes/a.yaml"]))
def test_any_bytes_load_or_are_a_config_error(data: bytes, where: str) -> None:
    outcome = run({**GOOD, where: data})
    if parsed(data) is UNREAD:
        assert isinstance(outcome, ConfigError) and outcome.field is None, outcome


def nested(shape: str, depth: int) -> bytes:
    inner = "[" * depth + "]" * depth if shape == "list" else "{a: " * depth + "1" + "}" * depth
    return f"default_upstream: http://h\nx: {inner}\n".encode()


@pytest.mark.parametrize(
    ("shape", "depth"),
    [
        ("list", 460),
        ("list", 490),
        ("list", 520),
        ("list", 1000),
        ("mapping", 490),
        ("mapping", 520),
    ],
)
def test_deep_nesting_is_an_unknown_key_or_too_deep(shape: str, depth: int) -> None:
    """PyYAML builds nesting by recursion, and so does the loader after it: whichever
    reaches Python's limit first, the answer is a ConfigError (slow inputs: not fuzzed)."""
    outcome = run({"main.yaml": nested(shape, depth)})
    assert isinstance(outcome, ConfigError)
    assert outcome.message == "invalid YAML: nested too deep" or outcome.field == "x"
    if depth == 1000:
        assert outcome.message == "invalid YAML: nested too deep"


# --- one field of the valid layout changed ----------------------------------------------


def paths(doc: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, item in items:
        yield (*at, key)
        yield from paths(item, (*at, key))


def spelled(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text = f"{text}[{part}]" if isinstance(part, int) else f"{text}.{part}" if text else part
    return text


FILES = {"main.yaml": MAIN, "routes/a.yaml": ROUTE_A, "routes/b.yml": ROUTE_B}


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """(file, path changed, new document): one value replaced or removed, or a key added."""
    name = draw(st.sampled_from(sorted(FILES)))
    doc = copy.deepcopy(FILES[name])
    path = draw(st.sampled_from(list(paths(doc))))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    how = draw(st.sampled_from(["replace", "replace", "remove", "add key"]))
    if how == "replace":
        parent[path[-1]] = draw(values)
    elif how == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        key = draw(st.text(min_size=1, max_size=8).filter(lambda key: key not in parent))
        parent[key] = draw(values)
        path = (*path[:-1], key)
    return name, path, doc


@fuzz(160)
@given(mutation=mutations())
def test_one_changed_field_loads_or_is_an_error_about_that_field(
    mutation: tuple[str, tuple[Any, ...], dict[str, Any]],
) -> None:
    name, path, doc = mutation
    with tempfile.TemporaryDirectory() as directory:
        main, files = write_layout(Path(directory), {**GOOD, name: yaml_bytes(doc)})
        outcome = load_checked(main, files)
        changed = str(Path(directory) / name)
    if not isinstance(outcome, ConfigError) or outcome.field is None or path[0] == "routes_dir":
        return
    field = outcome.field
    if outcome.file != changed:  # a clash with another route: its name or its match
        assert field.rpartition(".")[2] in ("name", "match"), outcome
        return
    where = spelled(path[:-1])
    inside = not where or field == where or field.startswith((f"{where}.", f"{where}["))
    assert inside, f"changed {spelled(path)}, error about {field}: {outcome}"


# --- what the fuzzers found -------------------------------------------------------------

ROUTE = b"{name: r, match: {path_prefix: /a}, production: {url: 'http://h'}"
REGRESSIONS = [
    pytest.param(b"listen: \xff\xfe\n", None, "not UTF-8: line 1: byte 0xff", id="not-utf8"),
    pytest.param(b"default_upstream: http://h\nx: 2001-13-01\n", None,
                 "line 2, column 4: invalid timestamp value", id="month-13"),
    pytest.param(b"drain_timeout_s: !!int abc\n", None, "line 1, column 18: invalid int value",
                 id="tagged-int"),
    pytest.param(b"drain_timeout_s: !!bool abc\n", None, "invalid bool value", id="tagged-bool"),
    pytest.param(b"drain_timeout_s: !!float ''\n", None, "invalid float value", id="empty-float"),
    pytest.param(b"drain_timeout_s: 1" + b"0" * 5000, None, "invalid int value", id="5000-digits"),
    pytest.param(b"x: &a [*a]\n", "x[0]", "contains itself (a recursive YAML alias)",
                 id="recursive-alias"),
    pytest.param(b"routes_dir: " + b"r" * 5000, "routes_dir", "cannot read: File name too long",
                 id="routes-dir-too-long"),
    pytest.param(b"listen: 'h:\xc2\xb2'\n", "listen", "must be host:port", id="superscript-port"),
    pytest.param(b"default_upstream: http://h\nrecording: {true: 1}\n", "recording.True",
                 "keys should be strings", id="bool-key"),
    pytest.param(b"default_upstream: http://h\nrecording: {2001-01-01: 1}\n",
                 "recording.2001-01-01", "keys should be strings", id="date-key"),
    pytest.param(b"routes: [" + ROUTE + b", 7: 1}]", "routes[0].7", "keys should be strings",
                 id="int-key-is-not-an-index"),
    pytest.param(b"routes: [" + ROUTE + b", shadows: [{name: s, url: 'http://h', "
                 b"headers: {set: {404: x}}}]}]", "routes[0].shadows[0].headers.set.404",
                 "input should be a valid string", id="int-header-name"),
    pytest.param(b"routes: [" + ROUTE + b"}, " + ROUTE + b"}]", "routes[1].name",
                 "route name 'r' is already used", id="inline-duplicate-name"),
    pytest.param(b"routes: [" + ROUTE + b"}, " + ROUTE.replace(b"r,", b"q,") + b"}]",
                 "routes[1].match", "path_prefix '/a' with all methods is already matched",
                 id="inline-duplicate-prefix"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "field", "message"), REGRESSIONS)
def test_what_the_fuzzers_found(data: bytes, field: str | None, message: str) -> None:
    outcome = run({"main.yaml": data})
    assert isinstance(outcome, ConfigError), outcome
    assert outcome.field == field
    assert message in outcome.message
