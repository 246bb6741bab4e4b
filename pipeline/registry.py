"""Plain name -> object registries with clear errors.

Models, data sets, devices and variants are each a :class:`Registry`. A duplicate
name is a programming error; an unknown name is a user error that lists the valid
names. CLI choices and help text are generated from ``names()``.
"""

from typing import Dict, Generic, Iterator, List, TypeVar

from pipeline.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping of unique names to entries.

    Args:
        kind: what the entries are, used in messages ("model family", "device").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Adds ``entry`` under ``name``. Raises ValueError on a duplicate name."""
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Returns the entry called ``name``.

        Raises:
            ConfigError: ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}"
            ) from None

    def names(self) -> List[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
