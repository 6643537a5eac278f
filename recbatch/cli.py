"""The ``recbatch`` command: a thin shell over the stage functions.

Each subcommand lives in ``recbatch/commands/<name>.py`` and provides ``HELP``,
``add_arguments(parser)`` and ``run(args, cfg) -> int``. Those modules import
heavy libraries (torch, ray) only inside ``run`` so ``--help`` stays instant.

Every subcommand takes ``--config FILE`` and any number of ``--set key=value``
overrides; subcommand flags are shorthands for config keys. A command may ship
its own default file (``DEFAULT_CONFIG``, e.g. the demo's CPU-sized settings).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from typing import Sequence

from recbatch.config import Config, ConfigError, load_config, parse_override
from recbatch.errors import EXIT_CODES, RecbatchError

COMMANDS = [
    "demo",
    "generate",
    "ingest",
    "train",
    "embed",
    "score",
    "evaluate",
    "load",
    "rollback",
    "nightly",
    "gc",
    "forget",
]

# Commands whose runs are pushed to the Pushgateway as one stage each (recbatch/metrics.py).
# Not here: nightly and demo push their stages themselves, generate makes demo input only.
PUSHED_COMMANDS = frozenset({"ingest", "train", "embed", "score", "evaluate", "load", "rollback", "gc"})


def _load_command(name: str):
    """The subcommand's module. An import error propagates: a command that silently
    vanished from ``recbatch --help`` would only be noticed at 3 a.m."""
    return importlib.import_module(f"recbatch.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbatch",
        description="Nightly distributed batch recommender on Ray.",
        epilog="Exit codes: " + "; ".join(f"{k} = {v}" for k, v in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _load_command(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        p.add_argument("--config", help="YAML config file (default: the embedded default)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set score.k=50 (repeatable)",
        )
        p.add_argument("--root", help="run layout root (config key: root)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def config_from_args(args: argparse.Namespace, flag_overrides: dict | None = None) -> Config:
    """Config file, then ``--set`` overrides, then the subcommand's own flags."""
    overrides = dict(parse_override(o) for o in args.overrides)
    config_file = args.config or getattr(args._module, "DEFAULT_CONFIG", None)
    if getattr(args, "root", None):
        overrides["root"] = args.root
    overrides.update({k: v for k, v in (flag_overrides or {}).items() if v is not None})
    return load_config(config_file, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    mod = args._module
    try:
        flag_overrides = mod.config_overrides(args) if hasattr(mod, "config_overrides") else {}
        cfg = config_from_args(args, flag_overrides)
        from recbatch.layout import require_supported_root  # here: pyarrow stays out of `--help`

        require_supported_root(cfg.root, args.command)
        if args.command in PUSHED_COMMANDS:
            return _run_pushed(args, cfg)
        return int(mod.run(args, cfg) or 0)
    except ConfigError as exc:
        print(f"recbatch {args.command}: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RecbatchError as exc:
        print(f"recbatch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


def _run_pushed(args: argparse.Namespace, cfg: Config) -> int:
    """Run a stage command and push its duration and outcome (a failed push is only logged)."""
    from recbatch.metrics import command_metrics, push

    start = time.perf_counter()
    status = "failed"
    try:
        code = int(args._module.run(args, cfg) or 0)
        status = "ran" if code == 0 else "failed"
        return code
    finally:
        push(cfg.metrics, args.command, command_metrics(args.command, status, time.perf_counter() - start))


if __name__ == "__main__":
    sys.exit(main())
