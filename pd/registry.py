"""One registry of named plug-ins: job kinds, training methods and dataset loaders each keep one.

A :class:`Registry` is a dict (name -> one instance of the registered class, in registration
order) with the decorator that fills it and the look-up that names the known entries when a
name is unknown.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Named instances of registered classes.

    Args:
        what: what an entry is, for messages (``method``, ``dataset loader``, ``job kind``).
        error: the exception an unknown name raises.
        listed: the word before the known names in that message (``allowed``, ``known``).
    """

    def __init__(self, what: str, error: type[Exception], listed: str = "allowed"):
        super().__init__()
        self.what, self.error, self.listed = what, error, listed

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register one instance of ``cls`` under ``cls.name``.

        Raises:
            ValueError: another class has that name.
        """
        if cls.name in self and type(self[cls.name]) is not cls:
            raise ValueError(f"{self.what} {cls.name!r} is registered twice")
        self[cls.name] = cls()
        return cls

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that add a toy one)."""
        self.pop(name, None)

    def get_entry(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            the registry's ``error``: no such entry (the message names the known ones).
        """
        try:
            return self[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.what} {name!r}; {self.listed}: {', '.join(self)}") from None
