"""cpt.options: a dataclass field declared with `option` is a checked command-line option."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from cpt.errors import CptError
from cpt.options import Options, build, check_value, declared, default_of, flag, option, option_names, option_type


@dataclass
class Example(Options):
    rate: float = option(0.5, "A share.", low=0, high=1)
    scale: float = option(1.0, "Strictly positive.", low=0, above=True)
    count: int = option(2, "At least one.", low=1)
    mode: str = option("a", "A choice.", choices=("a", "b"))
    names: list[str] = option(["x"], "A list.")
    on: bool = option(False, "A switch.")
    path: str | None = option(None, "Optional.")
    internal: int = 7
    hidden: list[int] = field(default_factory=lambda: [1])


@dataclass
class Adjusted(Options):
    lo: int = option(1, "Low.", low=0)
    hi: int = option(2, "High.", low=0)

    @staticmethod
    def adjust(values: dict) -> dict:  # `--lo` alone raises `--hi` to match
        return {**values, "hi": max(values.get("hi") or 2, values.get("lo") or 1)}


def test_declared_options_and_their_spelling():
    assert [f.name for f in declared(Example)] == ["rate", "scale", "count", "mode", "names", "on", "path"]
    assert flag("class_sample_rate") == "--class-sample-rate"
    assert option_names([Example, Adjusted]) == {"rate", "scale", "count", "mode", "names", "on", "path", "lo", "hi"}
    names = next(f for f in declared(Example) if f.name == "names")
    assert default_of(names) == ["x"] and option_type(Example, "path") == str | None
    a, b = Example(), Example()
    a.names.append("y")
    assert b.names == ["x"]  # a list default is fresh per instance


@pytest.mark.parametrize("values, fragment", [
    ({"rate": 1.5}, "--rate 1.5 is out of range: it must be between 0 and 1."),
    ({"rate": -0.1}, "--rate -0.1 is out of range"),
    ({"scale": 0.0}, "--scale 0 is out of range: it must be above 0."),
    ({"count": 0}, "--count 0 is out of range: it must be at least 1."),
    ({"mode": "c"}, "--mode 'c' is not valid; choose one of a, b."),
    ({"rate": math.nan}, "--rate must be a finite number (got nan)."),
    ({"scale": math.inf}, "--scale must be a finite number (got inf)."),
])
def test_values_outside_the_declaration_are_refused_naming_the_flag(values, fragment):
    with pytest.raises(CptError) as info:
        Example(**values)
    assert fragment in str(info.value)


def test_values_at_the_bounds_and_unchecked_values_pass():
    ok = Example(rate=0.0, scale=1e-9, count=1, mode="b", on=True, path=None, internal=-5)
    assert (ok.rate, ok.count, ok.internal) == (0.0, 1, -5)
    assert Example(rate=1.0).rate == 1.0
    rate = next(f for f in declared(Example) if f.name == "rate")
    check_value(rate, None)  # unset
    check_value(rate, True)  # switches are not numbers


def test_build_takes_the_fields_it_knows_and_keeps_defaults_for_none():
    built = build(Example, {"rate": 0.25, "path": None, "unrelated": 3, "internal": 9})
    assert (built.rate, built.path, built.internal, built.count) == (0.25, None, 9, 2)
    with pytest.raises(CptError, match="--count"):
        build(Example, {"count": -3})
    assert (build(Adjusted, {"lo": 5}).lo, build(Adjusted, {"lo": 5}).hi) == (5, 5)
    assert build(Adjusted, {}).hi == 2
