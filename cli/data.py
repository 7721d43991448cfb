"""`cpt data`: list the dataset recipes, or materialise one and print where it is."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json
from cpt_datasets.recipes import RECIPES, materialize
from rich.table import Table

from cpt.console import console
from cpt.errors import CptError


@app.command("data", epilog="""Examples:

  cpt data                 # list the recipes

  cpt data toy             # write the toy suite into the cache and print its task folders

  cpt fit --tasks toy ...  # the same happens on demand
""")
@command
def data_cmd(
    name: Annotated[Optional[str], typer.Argument(help=f"A recipe: {', '.join(RECIPES)}.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the task folders as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No info messages.")] = False,
) -> None:
    """Materialise a dataset recipe (on demand, once) and show its task folders."""
    if name is None:
        table = Table(title="dataset recipes")
        for col in ("name", "kind", "what"):
            table.add_column(col)
        for recipe in RECIPES.values():
            table.add_row(recipe.name, "multi-label" if recipe.multi_label else "single-label", recipe.description)
        console.print(table)
        return
    if name not in RECIPES:
        raise CptError(f"There is no recipe {name!r}; recipes: {', '.join(RECIPES)}.")
    tasks = {task: str(path) for task, path in materialize(name)}
    if json_out:
        emit_json(tasks)
    elif not quiet:
        for task, path in tasks.items():
            console.print(f"{task}\t{path}", highlight=False)
