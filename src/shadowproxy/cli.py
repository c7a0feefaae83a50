"""Command line: one function per command; the event loop is chosen here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from shadowproxy import __version__
from shadowproxy.config import Config, load_config, with_overrides
from shadowproxy.errors import ConfigError

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"shadowproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowproxy",
        description="Shadow-testing reverse proxy for ML model servers.",
    )
    parser.add_argument("--version", action="version", version=f"shadowproxy {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="main YAML file")
    serve.add_argument("--listen", help="host:port for traffic (overrides the file)")
    serve.add_argument("--admin-listen", help="host:port for the admin side (overrides the file)")
    serve.set_defaults(func=cmd_serve)

    validate = commands.add_parser("validate", help="check a config and print a summary")
    validate.add_argument("--config", required=True, help="main YAML file")
    validate.set_defaults(func=cmd_validate)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(summary(config))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = with_overrides(
        load_config(args.config), listen=args.listen, admin_listen=args.admin_listen
    )
    from shadowproxy.app import serve

    run(serve(config))
    return 0


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def summary(config: Config) -> str:
    main = config.main
    lines = [
        f"config {config.source}: OK",
        f"  listen {main.listen}, admin {main.admin_listen}",
        f"  default upstream: {main.default_upstream or 'none (unmatched requests get 404)'}",
        f"  recording to {main.recording.dir}",
        f"  {len(config.routes)} route(s):",
    ]
    for route, source in zip(config.routes, config.route_sources, strict=True):
        methods = ",".join(route.match.methods) if route.match.methods else "all methods"
        lines.append(
            f"    {route.name}: {route.match.path_prefix} ({methods}) -> "
            f"{route.production.url}  [{source}]"
        )
        for shadow in route.shadows:
            lines.append(
                f"      shadow {shadow.name} ({shadow.role}): {shadow.url} "
                f"sample_rate={shadow.sample_rate:g} timeout={shadow.timeout_s:g}s "
                f"max_in_flight={shadow.max_in_flight}"
            )
        if not route.shadows:
            lines.append("      no shadows")
    return "\n".join(lines)
