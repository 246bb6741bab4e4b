"""The exception types of mobile-model and the exit-code contract of every command.

Every error a user can cause derives from :class:`MobileModelError`; the CLI maps
each to one clear line and its ``exit_code``, one of the codes below. Anything
else is a bug: the CLI prints one line, writes the traceback to a log file and
exits with :data:`EXIT_INTERNAL_ERROR`.

It also defines :data:`Log`, the type of the progress logs that long work reports
through: this module is the bottom of the package, so every layer can name it.
"""

from typing import Callable

#: A progress log: called with one line of text, returns nothing (the CLI passes one
#: that prints, or one that drops everything under ``-q``).
Log = Callable[[str], None]

#: Success (a model that does not load on a device is a result: still 0).
EXIT_OK = 0
#: A gate failed: a budget missed, a regression against the baseline, no search candidate.
EXIT_GATE_FAILED = 1
#: Bad input: recipe, data, model file, baseline or options.
EXIT_BAD_INPUT = 2
#: The emulated device runtime (qemu, the ARM userland, LLVM) is unavailable or broken.
EXIT_DEVICE_UNAVAILABLE = 3
#: An unexpected internal error (a bug); the traceback is in the log file the CLI names.
EXIT_INTERNAL_ERROR = 4


class MobileModelError(Exception):
    """Base of all user-facing errors. ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(MobileModelError):
    """A recipe, profile or option is invalid (unknown key, bad value, unknown name)."""


class DataError(MobileModelError):
    """A data set is missing, corrupt, or has an unusable layout."""


class ModelFileError(MobileModelError):
    """A model file is missing, truncated, or not a TFLite flatbuffer."""


class UnsupportedLayerError(MobileModelError):
    """A layer cannot be pruned, clustered, quantized or converted."""


class ConversionMismatchError(MobileModelError):
    """A converted model disagrees with its source beyond tolerance."""


class UnusableInputError(MobileModelError):
    """A compare or report input is missing, is not a build, or is not in a format we read."""

    exit_code = EXIT_BAD_INPUT


class BudgetExceededError(MobileModelError):
    """One or more recipe budgets were missed; artifacts are still written."""

    exit_code = EXIT_GATE_FAILED


class DeviceUnavailableError(MobileModelError):
    """The emulated device cannot be run (no qemu, no ARM runtime, no root to build it)."""

    exit_code = EXIT_DEVICE_UNAVAILABLE


class DeviceOutputError(DeviceUnavailableError):
    """A device run's output is missing, truncated or malformed."""


class ClusterError(DeviceUnavailableError):
    """The jobs' workers cannot run a job: the Ray cluster cannot be reached, no node has
    a resource a job needs (a real device), or a job was lost with its worker or node more
    often than it may be retried."""


class RuntimeIncompatibleError(MobileModelError):
    """A model cannot be loaded by a device's runtime (missing op or op version).

    For the commands this is a result, not an error: ``device run`` and ``estimate``
    report it and exit 0. It keeps the bad-input code only where a caller insists on
    a loadable model.
    """


class BuildLockedError(MobileModelError):
    """Another build holds the lock on this build directory."""
