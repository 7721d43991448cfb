"""`cpt data`: list the dataset recipes, or materialise one and print where it is."""

from typing import Annotated, Optional

import typer
from cpt_cli.app import JsonOut, Quiet, app, command, emit_json
from rich.table import Table

from cpt.console import console
from cpt.data.recipes import recipes
from cpt.errors import CptError


@app.command("data", epilog="""Examples:

  cpt data                 # list the recipes

  cpt data toy             # write the toy suite into the cache and print its task folders

  cpt fit --tasks toy ...  # the same happens on demand
""")
@command
def data_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A recipe (`cpt data` lists them).")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """List the recipes usable as --tasks NAME, or materialise one (once) and show its task folders."""
    known = recipes()
    if name is None:
        table = Table(title="dataset recipes (--tasks NAME)")
        for col in ("name", "kind", "what"):
            table.add_column(col)
        for recipe in known.values():
            table.add_row(recipe.name, recipe.kind, recipe.description)
        console.print(table)
        return
    if name not in known:
        raise CptError(f"There is no recipe {name!r}; recipes: {', '.join(known)}.")
    tasks = {spec.name: spec.path for spec in known[name].tasks(None)}
    if json_out:
        emit_json(tasks)
    elif not quiet:
        for task, path in tasks.items():
            console.print(f"{task}\t{path}", highlight=False)
