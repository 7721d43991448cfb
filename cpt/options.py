"""Options are declared once, as fields of config dataclasses.

`option(default, help, ...)` makes a dataclass field that is also a command-line option
`--<name-with-dashes>`: its type, default, help, help panel and valid values live in that
one declaration. The CLI builds its flags from these declarations, `cpt methods` lists them,
`Options.__post_init__` validates them, and config.json records the resolved dataclasses.
Fields made with plain `dataclasses.field` (or a bare default) are internal settings.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Sequence

from cpt.errors import CptError


def option(default: Any, help: str, *, panel: str | None = None, choices: Sequence[str] | None = None,
           low: float | None = None, high: float | None = None, above: bool = False) -> Any:
    """A config field that is also the option `--<name>`.

    `choices` lists the valid strings; `low`/`high` bound numbers (`above`: strictly above `low`).
    """
    meta = {"help": help, "panel": panel, "choices": tuple(choices) if choices else None,
            "low": low, "high": high, "above": above}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line spelling of option `name`."""
    return "--" + name.replace("_", "-")


def declared(cls: type) -> list[Field]:
    """The fields of config dataclass `cls` that are options (made with `option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def option_type(cls: type, name: str) -> Any:
    """The resolved type hint of field `name` of `cls`."""
    return typing.get_type_hints(cls)[name]


def default_of(f: Field) -> Any:
    """A field's default value."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _range_text(meta: dict) -> str:
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}" if not meta["above"] else f"above {low:g} and at most {high:g}"
    if low is not None:
        return f"above {low:g}" if meta["above"] else f"at least {low:g}"
    return f"at most {high:g}"


def check_value(f: Field, value: Any) -> None:
    """Refuse a value outside the field's declared choices or range (one paragraph, exit 2)."""
    meta = f.metadata
    if value is None or isinstance(value, bool):
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise CptError(f"{flag(f.name)} {value!r} is not valid; choose one of {', '.join(meta['choices'])}.")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise CptError(f"{flag(f.name)} must be a finite number (got {value}).")
        low, high = meta.get("low"), meta.get("high")
        bad = (low is not None and (value <= low if meta.get("above") else value < low)) or (
            high is not None and value > high)
        if bad:
            raise CptError(f"{flag(f.name)} {value:g} is out of range: it must be {_range_text(meta)}.")


@dataclass
class Options:
    """Base of every config dataclass: checks each declared option's value after init."""

    def __post_init__(self) -> None:
        for f in declared(type(self)):
            check_value(f, getattr(self, f.name))


def build(cls: type, values: dict[str, Any]) -> Any:
    """Config `cls` from the entries of `values` it has fields for (None keeps the default)."""
    names = {f.name for f in fields(cls)}
    if hasattr(cls, "adjust"):  # a config's rule for how options given together read
        values = cls.adjust(values)
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def option_names(classes: Sequence[type]) -> set[str]:
    """The option names the config classes declare."""
    return {f.name for cls in classes for f in declared(cls)}
