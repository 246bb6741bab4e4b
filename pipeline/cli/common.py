"""What every ``mobile-model`` command shares: the exit-code mapping, progress logger, JSON output.

Each command module imports these instead of keeping its own copy, so an error
prints the same one line and exits with the same code whichever group runs it.
The codes are those of :mod:`pipeline.errors` (``EXIT_*``).
"""

import datetime
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from pipeline.errors import EXIT_INTERNAL_ERROR, Log, MobileModelError

#: Exit code after SIGINT (Ctrl-C) outside a build's own handler, as a shell reports it (128 + 2).
EXIT_INTERRUPTED = 130


def fail(error: MobileModelError) -> NoReturn:
    """One clear line on stderr and the error's exit code (no traceback for user errors).

    Args:
        error: any of our exceptions; its ``exit_code`` becomes the process's.
    """
    click.echo(f"error: {error}", err=True)
    from pipeline.pool import head_lost

    if head_lost():  # Ray's exit handlers would wait on the head, then end the process with a log dump
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(error.exit_code)
    sys.exit(error.exit_code)


def log_dir() -> Path:
    """Where internal-error tracebacks go: ``$MOBILE_MODEL_CACHE/logs`` (default ``~/.cache/mobile-model/logs``)."""
    base = os.environ.get("MOBILE_MODEL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mobile-model") / "logs"


def write_traceback(exc: BaseException) -> Path:
    """Writes ``exc``'s traceback (and the command line) to a new file; returns its path.

    Falls back to the temporary directory when the log directory cannot be written.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = (f"mobile-model internal error, {stamp}\ncommand: {' '.join(sys.argv)}\n\n"
            + "".join(traceback.format_exception(exc)))
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"internal-error-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    raise OSError("cannot write the traceback to the log directory nor the temporary directory")


def internal_error(exc: BaseException) -> NoReturn:
    """An unexpected exception (a bug): one line naming it and the log file, then exit 4."""
    first = (str(exc).strip().splitlines() or [""])[0]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    try:
        where = f"traceback in {write_traceback(exc)}"
    except OSError as e:
        where = f"traceback not written: {e}"
    click.echo(f"internal error: {what} (a bug in mobile-model; {where})", err=True)
    sys.exit(EXIT_INTERNAL_ERROR)


def interrupted() -> NoReturn:
    """Ctrl-C outside a build's own signal handling: one line and exit 130 (not click's 'Aborted!' and 1)."""
    click.echo("\ninterrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


def logger(quiet: bool) -> Log:
    """A progress logger on stderr: lines with a progress bar on a terminal, plain lines
    otherwise (:mod:`pipeline.cli.progress`), nothing when ``quiet`` (``-q`` or ``--json``)."""
    from pipeline.cli.progress import progress_log

    return (lambda msg: None) if quiet else progress_log()


def echo_json(obj: Any, default: Callable[[Any], Any] = None) -> None:
    """Prints ``obj`` as indented JSON on stdout (``default`` as for :func:`json.dumps`)."""
    click.echo(json.dumps(obj, indent=2, default=default))


#: Help of ``--ray``: what runs on the cluster is the command's own (``what``).
RAY_HELP = ("Run {what} as jobs on the Ray cluster whose head is at ADDRESS (HOST:PORT; default "
            "$RAY_ADDRESS; without either, in worker processes of this machine). Everything else runs "
            "here. See docs/ray.md.")


def ray_option(what: str):
    """The ``--ray ADDRESS`` option of a command whose ``what`` can run on a Ray cluster."""
    return click.option("--ray", "ray_address", metavar="ADDRESS", help=RAY_HELP.format(what=what))


def join_cluster(address, log: Log) -> None:
    """Joins the Ray cluster at ``address`` (or ``$RAY_ADDRESS``) when one is named.

    Raises:
        ClusterError: it cannot be reached.
    """
    from pipeline.pool import connect

    joined = connect(address)
    if joined:
        log(f"[ray] joined the cluster at {joined}")

