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
    "forget",
]


def _load_command(name: str):
    module = f"recbatch.commands.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None  # not built yet in this checkout
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recbatch",
        description="Nightly distributed batch recommender on Ray.",
        epilog="Exit codes: " + "; ".join(f"{k} = {v}" for k, v in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = _load_command(name)
        if mod is None:
            continue
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
        return int(mod.run(args, cfg) or 0)
    except ConfigError as exc:
        print(f"recbatch {args.command}: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RecbatchError as exc:
        print(f"recbatch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
