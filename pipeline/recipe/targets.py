"""Real devices by address, and the recipe's ``devices.targets`` entries that name them.

``ssh://[USER@]HOST[:PORT]`` and ``adb://SERIAL`` (:func:`parse_target`) are pure data,
here in the recipe's layer so that a recipe is checked when it is loaded; running on
them is :mod:`pipeline.devices.remote`. A ``devices.targets`` entry is an emulated
profile (``rpi4``) or a profile and the real device it stands for
(``rpi4@ssh://pi@camera-7``, :func:`parse_entry`): the build runs both.
"""

import re
from dataclasses import dataclass
from typing import Optional, Union

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class SshTarget:
    """A board reached with the system's ``ssh``; ``user`` None: ssh's default."""

    host: str
    port: int = 22
    user: Optional[str] = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def url(self) -> str:
        return f"ssh://{self.destination}{'' if self.port == 22 else f':{self.port}'}"


@dataclass(frozen=True)
class AdbTarget:
    """An Android device reached with ``adb -s SERIAL``."""

    serial: str

    def url(self) -> str:
        return f"adb://{self.serial}"


Target = Union[SshTarget, AdbTarget]

_SSH = re.compile(r"ssh://(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
                  r"(?::(?P<port>\d+))?/?")
_ADB = re.compile(r"adb://(?P<serial>[A-Za-z0-9._:-]+)")
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_target(text: str) -> Target:
    """``ssh://[USER@]HOST[:PORT]`` or ``adb://SERIAL``.

    Raises:
        ConfigError: any other form, or a port outside 1-65535.
    """
    m = _SSH.fullmatch(text)
    if m:
        port = int(m.group("port") or 22)
        if not 1 <= port <= 65535:
            raise ConfigError(f"target {text!r}: port {port} is outside 1-65535")
        return SshTarget(host=m.group("host").strip("[]"), port=port, user=m.group("user"))
    m = _ADB.fullmatch(text)
    if m:
        return AdbTarget(serial=m.group("serial"))
    raise ConfigError(f"target {text!r}: expected ssh://[USER@]HOST[:PORT] or adb://SERIAL")


@dataclass(frozen=True)
class DeviceEntry:
    """One ``devices.targets`` entry: the emulated ``profile``, and the real ``target`` it
    stands for (None: emulated only). ``text`` is the entry as written, the key of its
    results in the build summary and the subject of its budgets."""

    text: str
    profile: str
    target: Optional[Target] = None


def parse_entry(text: str, where: str = "devices.targets") -> DeviceEntry:
    """``PROFILE``, ``PROFILE@ssh://[USER@]HOST[:PORT]`` or ``PROFILE@adb://SERIAL``.

    Only the form is checked here; whether the profile is registered is the device
    registry's to say (:func:`pipeline.devices.profiles.get_device`).

    Raises:
        ConfigError: not a string, no profile before a target, or a target of another form.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a device profile or PROFILE@ssh://[USER@]HOST[:PORT] or "
                          f"PROFILE@adb://SERIAL, got {text!r}")
    profile, at, rest = text.partition("@")
    if not at:
        return DeviceEntry(text, text)
    if "://" in profile or not _PROFILE.fullmatch(profile):
        raise ConfigError(f"{where}: {text!r}: a real device is named after the emulated profile that "
                          f"stands for it, PROFILE@ssh://[USER@]HOST[:PORT] or PROFILE@adb://SERIAL "
                          f"(e.g. rpi4@ssh://pi@camera-7)")
    try:
        target = parse_target(rest)
    except ConfigError as e:
        raise ConfigError(f"{where}: {text!r}: {e}") from None
    return DeviceEntry(text, profile, target)


def profile_of(entry: str) -> str:
    """The emulated profile of a ``devices.targets`` entry (the entry itself when it names no target)."""
    return entry.partition("@")[0]
