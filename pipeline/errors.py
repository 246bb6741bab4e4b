"""The exception types of mobile-model.

Every error a user can cause derives from :class:`MobileModelError`; the CLI maps
each to one clear line and the exit code below. Anything else is a bug and keeps
its traceback.
"""


class MobileModelError(Exception):
    """Base of all user-facing errors. ``exit_code`` is what the CLI returns."""

    exit_code = 2


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

    exit_code = 2


class BudgetExceededError(MobileModelError):
    """One or more recipe budgets were missed; artifacts are still written."""

    exit_code = 1


class DeviceUnavailableError(MobileModelError):
    """The emulated device cannot be run (no qemu, no ARM runtime, no root to build it)."""

    exit_code = 3


class DeviceOutputError(DeviceUnavailableError):
    """A device run's output is missing, truncated or malformed."""


class RuntimeIncompatibleError(MobileModelError):
    """A model cannot be loaded by a device's runtime (missing op or op version)."""


class BuildLockedError(MobileModelError):
    """Another build holds the lock on this build directory."""
