"""Command line: one function per command; the event loop is chosen here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from shadowproxy import DISTRIBUTION, __version__
from shadowproxy.config import Config, canary_refusal, load_config, with_overrides
from shadowproxy.errors import ConfigError
from shadowproxy.experiments.canary import state_path
from shadowproxy.experiments.promotion import Promotion, for_canary
from shadowproxy.loop import run_loop

if TYPE_CHECKING:
    from shadowproxy.recording.forkserver import ForkServer

EXIT_CONFIG = 2
DEMO_SCENARIOS = ("shadow", "canary-bad", "canary-good", "ab", "ab-skewed", "chaos", "drift")
"""``demo --scenario`` choices (``shadowproxy.demo.SCENARIOS`` describes each)."""

T = TypeVar("T")

SERVE_DESCRIPTION = """\
Run the proxy: production answers every client, shadows get copies, and every
pair is compared and recorded. The config is checked first: any problem exits 2
naming the file and the field, before a port is bound. SIGHUP or POST /reload
re-reads the files; SIGTERM finishes requests, drains copies, flushes records
and exits 0.
"""

SERVE_EXAMPLES = """\
examples:
  shadowproxy serve --config config/shadowproxy.yaml
  shadowproxy serve --config /etc/shadowproxy/shadowproxy.yaml --listen 0.0.0.0:8080 --workers 2
  shadowproxy --log-level warning serve --config config/shadowproxy.yaml

then, from another terminal:
  curl -s http://127.0.0.1:9090/readyz          # ready once the listeners are up
  curl -s http://127.0.0.1:9090/metrics | grep shadowproxy_shadow_requests_total
"""

VALIDATE_DESCRIPTION = """\
Load the main file and every route file exactly as serve would, print the
routes and shadows, and exit 0; on any problem, exit 2 naming the file, the
field and what is wrong. Binds no port and contacts no upstream.
"""

VALIDATE_EXAMPLES = """\
examples:
  shadowproxy validate --config config/shadowproxy.yaml
  DEFAULT_UPSTREAM=http://10.0.0.5:8000 shadowproxy validate --config config/shadowproxy.yaml

an error names the file and the field:
  shadowproxy: config error: config/routes/price.yaml: shadows[0].sample_rate: must be
  between 0 and 1, got 1.5
"""


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
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="log to stderr from this level up (default info: start, listeners, reloads, "
        "canary decisions and every problem; warning: problems only; debug adds the "
        "libraries' own debug lines). Goes before the command: "
        "shadowproxy --log-level warning serve ...",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    _serve_command(commands)
    _demo_command(commands)
    _validate_command(commands)
    _report_command(commands)
    return parser


def _serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", required=True, help="main YAML file")
    serve.add_argument("--listen", help="host:port for traffic (overrides the file)")
    serve.add_argument("--admin-listen", help="host:port for the admin side (overrides the file)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the traffic port (one per core; default 1)",
    )
    # Set by the supervisor for its workers: bind the shared port with SO_REUSEPORT.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)


def _demo_command(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="train two models, shadow one behind the other, write the report"
    )
    demo.add_argument(
        "--scenario",
        default="shadow",
        choices=DEMO_SCENARIOS,
        help="shadow (default), a canary that fails or succeeds, an A/B test, "
        "the same with a skewed split, chaos faults, or drift without labels",
    )
    demo.add_argument(
        "--out",
        help="directory for config, data, report (default demo-output, "
        "or demo-output/<scenario> for the other scenarios)",
    )
    demo.add_argument(
        "--rate", type=float, help="requests per second to send (default: the scenario's)"
    )
    demo.add_argument(
        "--seed", type=int, default=1, help="seed of the simulated outcomes and failures"
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the stack up after the traffic (shadow scenario)",
    )
    demo.set_defaults(func=cmd_demo)


def _validate_command(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a config and print a summary",
        description=VALIDATE_DESCRIPTION,
        epilog=VALIDATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("--config", required=True, help="main YAML file")
    validate.set_defaults(func=cmd_validate)


def _report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="analyse a recording: agreement, latency, ground truth, verdicts"
    )
    report.add_argument("root", metavar="ROOT", help="recording.dir: a directory or pyarrow URI")
    report.add_argument("--route", action="append", default=[], help="only this route (repeatable)")
    report.add_argument(
        "--shadow", action="append", default=[], help="only this shadow (repeatable)"
    )
    report.add_argument("--since", help="ISO date or timestamp, inclusive (UTC if no offset)")
    report.add_argument("--until", help="ISO timestamp, exclusive; a bare date includes that day")
    report.add_argument("--labels", metavar="FILE", help="CSV or Parquet with request_id,label")
    report.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="JSONPATH",
        help="break agreement down by this JSON path into the request body (repeatable)",
    )
    report.add_argument("--out", metavar="HTML", help="write the HTML report here")
    report.add_argument("--json", dest="json_out", metavar="FILE", help="write summary.json here")
    report.add_argument(
        "--skip-bad-files", action="store_true", help="skip (and count) corrupt Parquet files"
    )
    report.add_argument(
        "--memory-limit", default="1GB", help="DuckDB's memory budget; beyond it, it spills to disk"
    )
    report.add_argument(
        "--outcome",
        default="auto",
        choices=["auto", "binary", "continuous", "ordinal"],
        help="experiments: the outcome's kind (auto: from the values posted to /feedback)",
    )
    report.add_argument(
        "--mde",
        default="0.05",
        help="experiments: the relative effect to plan sample sizes for (default 0.05 = 5%%)",
    )
    report.add_argument(
        "--config",
        metavar="FILE",
        help="the proxy's main YAML file: its routes' promotion: criteria (default: the "
        "documented defaults) and monitor: blocks (the Drift section)",
    )
    report.add_argument(
        "--gate",
        action="store_true",
        help="exit 0 on PROMOTE, 3 on HOLD, 4 on REJECT (the worst candidate decides)",
    )
    report.add_argument(
        "--engine",
        default="duckdb",
        choices=["duckdb", "spark"],
        help="where the scans run: duckdb (embedded, default) or spark; same summary",
    )
    report.add_argument(
        "--spark-master",
        metavar="URL",
        help="--engine spark: sc://HOST:PORT (Spark Connect), spark://..., yarn, local[N] "
        "(default: $SPARK_REMOTE, else local[*])",
    )
    report.set_defaults(func=cmd_report)


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(summary(config))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Imported lazily: the proxy itself never loads DuckDB."""
    try:
        from shadowproxy import report
        from shadowproxy.report import load, table  # noqa: F401  (DuckDB and rich, at import)
    except ImportError as exc:
        print(missing_extra("shadowproxy report", "report", exc), file=sys.stderr)
        return EXIT_CONFIG
    promotions, canary_states, monitors = _route_settings(args.config)
    try:
        options = report.ReportOptions(
            root=args.root,
            filters=report.Filters(
                routes=tuple(args.route),
                shadows=tuple(args.shadow),
                since=report.parse_time(args.since, end=False) if args.since else None,
                until=report.parse_time(args.until, end=True) if args.until else None,
            ),
            labels=args.labels,
            segments=tuple(report.parse_segment(s) for s in args.segment),
            out=args.out,
            json_out=args.json_out,
            skip_bad_files=args.skip_bad_files,
            memory_limit=args.memory_limit,
            outcome=args.outcome,
            mde=report.parse_mde(args.mde),
            promotions=promotions,
            canary_states=canary_states,
            gate=args.gate,
            monitors=monitors,
            config=args.config,
            engine=args.engine,
            spark_master=args.spark_master,
        )
        return report.run_report(options)
    except report.ReportInputError as exc:
        print(f"shadowproxy report: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def missing_extra(command: str, extra: str, error: ImportError) -> str:
    """One line that says what to install, instead of a traceback."""
    missing = error.name.partition(".")[0] if error.name else str(error)
    return (
        f"{command} needs the {extra} extra ({missing} is not installed): "
        f"pip install '{DISTRIBUTION}[{extra}]'"
    )


def _route_settings(
    path: str | None,
) -> tuple[tuple[tuple[str, Promotion], ...], tuple[tuple[str, str], ...], dict[str, Any] | None]:
    """From ``--config``: each route's promotion criteria, each canary route's state
    file, and each route's ``monitor:`` block by name (none of them without it; the
    monitors are None then, so the report says why it has no Drift section). A canary
    route's criteria take their margins from its guardrails where the two overlap. A
    bad config raises ``ConfigError`` (exit 2, naming the file and the field)."""
    if path is None:
        return (), (), None
    config = load_config(path)
    monitors = {route.name: route.monitor for route in config.routes if route.monitor}
    promotions, states = [], []
    for route in config.routes:
        promotion = route.promotion
        if route.canary is not None:
            promotion = for_canary(promotion, route.canary.guardrails)
            states.append((route.name, state_path(config.main.state_dir, route.name)))
        promotions.append((route.name, promotion))
    return tuple(promotions), tuple(states), monitors


def cmd_serve(args: argparse.Namespace) -> int:
    def load() -> Config:
        # A reload reads the same files with the same flags on top.
        config = load_config(args.config)
        return with_overrides(config, listen=args.listen, admin_listen=args.admin_listen)

    config = load()
    if args.workers < 1:
        print("shadowproxy: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    refusal = canary_refusal(config) if args.workers > 1 else None
    if refusal is not None:
        print(f"shadowproxy: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers > 1 and config.main.grpc_listen is not None:
        print(
            "shadowproxy: grpc_listen is served by one process (its port is not shared "
            "between workers): serve it with --workers 1",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.workers > 1:
        from shadowproxy.admin.supervisor import Supervisor

        supervisor = Supervisor(config, args.config, args.workers, args.log_level)
        return run_loop(supervisor.run())
    forks = _writer_forks(config)
    from shadowproxy.app import serve  # after the fork: the writer needs none of it

    run_loop(
        serve(
            config,
            load=load,
            reuse_port=args.reuse_port,
            supervisor_pid=args.supervisor_pid,
            writer_forks=forks,
        )
    )
    return 0


def _writer_forks(config: Config) -> ForkServer | None:
    """The writer's fork server, started here: before the loop and any thread, so
    forking is safe. Modules the writer needs are imported first, to be shared by both
    processes; the proxy's own (aiohttp and up) after, so the server keeps no copy of
    the pages the proxy writes to."""
    recording = config.main.recording
    if recording.writer != "process" or recording.writer_start != "fork":
        return None
    from shadowproxy.recording import child  # noqa: F401  (shared with the writer)
    from shadowproxy.recording.forkserver import ForkServer

    return ForkServer.start()


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401

        from shadowproxy.demo import run_scenario
    except ImportError as exc:
        print(missing_extra("shadowproxy demo", "demo", exc), file=sys.stderr)
        return EXIT_CONFIG
    from pathlib import Path

    if args.rate is not None and args.rate <= 0:
        print("shadowproxy: --rate must be positive", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out) if args.out else None
    return run_scenario(
        args.scenario, out, args.rate, keep_running=args.keep_running, seed=args.seed
    )


def summary(config: Config) -> str:
    main = config.main
    lines = [
        f"config {config.source}: OK",
        f"  listen {main.listen}, admin {main.admin_listen}"
        + (f", gRPC {main.grpc_listen}" if main.grpc_listen else ""),
        f"  default upstream: {main.default_upstream or 'none (unmatched requests get 404)'}",
        f"  recording to {main.recording.dir}",
        f"  {len(config.routes)} route(s):",
    ]
    for route, source in zip(config.routes, config.route_sources, strict=True):
        methods = ",".join(route.match.methods) if route.match.methods else "all methods"
        matched = f"{route.match.path_prefix} ({methods})"
        if route.match.grpc is not None:
            matched = f"gRPC {route.match.grpc}"
        lines.append(f"    {route.name}: {matched} -> {route.production.url}  [{source}]")
        for shadow in route.shadows:
            lines.append(
                f"      shadow {shadow.name} ({shadow.role}): {shadow.url} "
                f"sample_rate={shadow.sample_rate:g} timeout={shadow.timeout_s:g}s "
                f"max_in_flight={shadow.max_in_flight}"
            )
        if not route.shadows:
            lines.append("      no shadows")
    return "\n".join(lines)
