"""Value rules shared by every config model (``config``, ``compare.spec``,
``experiments.spec``).

Kept apart so the models that ``config`` imports can use them without importing
``config`` back, and so a rule reads the same wherever a value breaks it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""Route, shadow and arm names end up in partition paths and metric labels: keep them
tame. It has no ':', which keeps the hash salts built from names apart from each other."""

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class FrozenModel(BaseModel):
    """Config values never change after loading, and an unknown key is an error. A
    field's docstring is its description, from which docs/reference/configuration.md is
    generated."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


GRPC_SCHEMES = ("grpc", "grpcs")


def check_url(value: str) -> str:
    """An upstream: ``scheme://host[:port]``, nothing else (the request path is the
    client's, forwarded as is)."""
    return _check_url(value, ("http", "https"))


def check_upstream_url(value: str) -> str:
    """A route's upstream: HTTP, or gRPC (``grpc://``, ``grpcs://`` with TLS)."""
    return _check_url(value, ("http", "https", *GRPC_SCHEMES))


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        listed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ValueError(f"must be an {listed} URL, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"has no host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"has an invalid port, got {value!r}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            "must be scheme://host[:port] only (the request path is forwarded as is), "
            f"got {value!r}"
        )
    return value.rstrip("/")


def is_header_name(value: str) -> bool:
    """An HTTP field name (RFC 9110 token)."""
    return _HEADER_NAME.match(value) is not None


def check_header_name(value: str) -> str:
    if not is_header_name(value):
        raise ValueError(f"{value!r} is not a valid header name")
    return value


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` looks like a typo of a choice, else ''."""
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices``; else an error naming them and the likely typo."""
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ValueError(f"unknown {what} {value!r}{hint}; one of: {', '.join(choices)}")
    return value


def check_unique(names: Iterable[str], what: str, where: str = "") -> None:
    """Raise naming the first name used twice (names become paths and metric labels)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is used twice{where}")
        seen.add(name)
