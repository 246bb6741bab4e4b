"""The ``mobile-model`` command line: the click group and its commands.

Thin commands: parse, build a config, call one pipeline function, map our errors
to an exit code and one clear line (:func:`pipeline.cli.common.fail`). Each command
lives in its own module of this package; this one holds only the group, which sets
TensorFlow's environment once and maps what a command lets through: our errors to
their code (0 ok, 1 gate failed, 2 bad input, 3 device runtime unavailable), any
other exception to 4 with its traceback in a log file, Ctrl-C to 130.
TensorFlow is imported inside command bodies, so ``--help`` is instant.
"""

import click

from pipeline.cli.build import build
from pipeline.cli.common import fail, internal_error, interrupted
from pipeline.cli.devices import device, devices
from pipeline.cli.gate import baseline, compare, report
from pipeline.cli.info import datasets, evaluate, inspect, models
from pipeline.cli.latency import calibrate, estimate
from pipeline.cli.search import search
from pipeline.cli.transfer_table import transfer_table
from pipeline.errors import MobileModelError
from pipeline.native import tf_environment

tf_environment()


class _Group(click.Group):
    """Maps our exceptions to one line on stderr and their exit code; anything else is a bug (exit 4)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MobileModelError as exc:
            fail(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors (exit 2) and --help/--version exits are click's own
        except KeyboardInterrupt:
            interrupted()
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into exit 4 and a log
            internal_error(exc)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mobile-model")
def main():
    """Turn a labelled image data set into a small, verified TFLite model.

    Trains a MobileNet, prunes and quantization-aware-trains it, converts it to
    TFLite (float32, float16, dynamic-range, int8), evaluates every variant and
    runs it on emulated ARM devices.
    """


main.add_command(build)
main.add_command(devices)
main.add_command(device)
main.add_command(calibrate)
main.add_command(estimate)
main.add_command(compare)
main.add_command(baseline)
main.add_command(report)
main.add_command(search)
main.add_command(transfer_table)
main.add_command(models)
main.add_command(datasets)
main.add_command(inspect)
main.add_command(evaluate)

