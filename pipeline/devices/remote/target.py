"""Where a real measurement runs, and with which settings: pure data and parsing.

``ssh://[USER@]HOST[:PORT]`` and ``adb://SERIAL`` (:func:`parse_target`, defined with the
recipe's entries in :mod:`pipeline.recipe.targets`), the exact
settings of a timed run (:class:`Settings`), and the user cache the remote targets keep
their known-hosts file, remembered paths and measured points in.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from pipeline.errors import ConfigError
from pipeline.recipe.targets import AdbTarget, SshTarget, Target, parse_target
from pipeline.store.isolated_env import cache_root

__all__ = ["ADB_DIR", "REMOTE_CACHE", "AdbTarget", "Settings", "SshTarget", "Target", "cache_dir", "parse_cores",
           "parse_target"]

#: The directory on a board that holds the files of a run (removed after it), and only that.
REMOTE_CACHE = "~/.cache/mobile-model-remote"
#: The directory on an Android device that holds benchmark_model and the models.
ADB_DIR = "/data/local/tmp/mobile-model"


def parse_cores(text: str) -> Tuple[int, ...]:
    """A CPU list as ``taskset -c`` takes it (``0-3``, ``4,6``, ``0-1,4``), as sorted CPU numbers.

    Raises:
        ConfigError: not such a list.
    """
    cores = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConfigError(f"cores {text!r}: expected a CPU list such as 0-3 or 4,6 or 0-1,4")
        cores.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return tuple(sorted(cores))


@dataclass(frozen=True)
class Settings:
    """Everything needed to repeat a measurement.

    Attributes:
        threads: interpreter threads.
        runs: timed invokes; warmup: untimed invokes before them (after the first).
        cores: the CPUs the process is pinned to (``taskset -c``), None: not pinned.
        remote_python: the board's python (ssh); None for adb.
        runtime: the runtime that ran (``litert 2.3.0``), filled in after the probe.
    """

    threads: int = 1
    runs: int = 50
    warmup: int = 5
    cores: Optional[Tuple[int, ...]] = None
    remote_python: Optional[str] = "python3"
    runtime: Optional[str] = None

    def cores_text(self) -> Optional[str]:
        """The CPU list as ``taskset -c`` takes it (``0,1,2,3``), or None."""
        return None if self.cores is None else ",".join(map(str, self.cores))

    def validate(self) -> "Settings":
        """Returns self; raises ConfigError on a count below its minimum."""
        for name, value, least in (("threads", self.threads, 1), ("timed runs", self.runs, 1),
                                   ("warm-up runs", self.warmup, 0)):
            if value < least:
                raise ConfigError(f"{name} must be >= {least}, got {value}")
        return self


def cache_dir() -> Path:
    """Known hosts, remembered tool paths and the measured points: ``$MOBILE_MODEL_REMOTE_CACHE``,
    else ``$MOBILE_MODEL_CACHE/remote`` (default ``~/.cache/mobile-model/remote``)."""
    own = os.environ.get("MOBILE_MODEL_REMOTE_CACHE")
    return Path(own) if own else cache_root() / "remote"
