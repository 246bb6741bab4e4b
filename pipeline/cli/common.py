"""What every ``mobile-model`` command shares: error exit, progress logger, JSON output.

Each command module imports these instead of keeping its own copy, so an error
prints the same one line and exits with the same code whichever group runs it.
"""

import json
import sys
from typing import Any, Callable, NoReturn

import click

from pipeline.errors import MobileModelError


def fail(error: MobileModelError) -> NoReturn:
    """One clear line on stderr and the error's exit code (no traceback for user errors).

    Args:
        error: any of our exceptions; its ``exit_code`` becomes the process's.
    """
    click.echo(f"error: {error}", err=True)
    sys.exit(error.exit_code)


def logger(quiet: bool) -> Callable[[str], None]:
    """A progress logger: each message on its own line on stderr, or nothing when ``quiet``."""
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def echo_json(obj: Any, default: Callable[[Any], Any] = None) -> None:
    """Prints ``obj`` as indented JSON on stdout (``default`` as for :func:`json.dumps`)."""
    click.echo(json.dumps(obj, indent=2, default=default))
