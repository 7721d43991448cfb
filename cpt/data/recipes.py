"""The recipe registry: names usable as `--tasks NAME` (the toy world, benchmark suites).

Recipes live outside the library (the `cpt_datasets` package, or any package a user installs)
and register here through the `cpt.recipes` entry point group: each entry point names a
function that calls `register`. The data layer looks recipes up by name and never imports
the packages that define them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from cpt.data.taskfile import TaskSpec

RECIPES: dict[str, Recipe] = {}
_loaded: list[bool] = []


@dataclass(frozen=True)
class Recipe:
    """A named task list; `defaults` are option presets (an explicit option overrides them)."""

    name: str
    description: str
    kind: str  # "single-label" or "multi-label"
    tasks: Callable[[Path | None, int], list[TaskSpec]]  # (data root, seed) -> the task specs
    defaults: dict[str, Any] = field(default_factory=dict)
    materialised: bool = False  # generated into the cache by cpt (`cpt data NAME`), not downloaded


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry (recipe packages call this from their entry point)."""
    RECIPES[recipe.name] = recipe
    return recipe


def recipes() -> dict[str, Recipe]:
    """Every registered recipe, loading the `cpt.recipes` entry points once."""
    if not _loaded:
        _loaded.append(True)
        for entry in entry_points(group="cpt.recipes"):
            entry.load()()
    return RECIPES


def recipe(name: str) -> Recipe | None:
    """The recipe `name`, or None."""
    return recipes().get(name)
