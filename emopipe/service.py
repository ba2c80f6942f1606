"""What every stage's ``main()`` does first: arguments, config, logging, a stop event."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import zmq

from emopipe import config as config_mod
from emopipe.config import Config, ConfigError

#: exit status of a stage whose configuration is invalid (the launcher does not restart it)
EXIT_CONFIG = 2


def setup(stage: str, argv: Sequence[str] | None = None) -> tuple[Config, threading.Event]:
    """Parse ``--config``, load and validate it, set up logging and SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog=f"emopipe-{stage}", description=f"emopipe {stage} stage")
    parser.add_argument(
        "--config",
        action="append",
        help="TOML config file (default: built-in defaults); repeatable: a later file's keys win",
    )
    args = parser.parse_args(argv)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"emopipe-{stage}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc
    setup_logging(stage, cfg.pipeline.log_level)
    for key, value in config_mod.env_overrides(os.environ).items():
        logging.getLogger(__name__).info("config override from the environment: %s = %r", key, value)
    return cfg, install_stop_handlers()


@contextmanager
def starting(stage: str) -> Iterator[None]:
    """Start-up steps that fail for a reason a restart cannot mend (a port already in use, a
    file that cannot be written): log one message naming it and exit with ``EXIT_CONFIG``, so
    the launcher stops instead of restarting the stage again and again."""
    try:
        yield
    except (OSError, zmq.ZMQError) as exc:
        logging.getLogger(__name__).error("%s cannot start: %s", stage, exc)
        raise SystemExit(EXIT_CONFIG) from exc


def setup_logging(name: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class StopEvent(threading.Event):
    """Set by SIGTERM or SIGINT; ``signum`` says which (None: not by a signal)."""

    signum: int | None = None


def install_stop_handlers() -> StopEvent:
    """SIGTERM and SIGINT set the returned event; the stage's loop checks it."""
    stop = StopEvent()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("received %s, stopping", signal.Signals(signum).name)
        stop.signum = signum
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
