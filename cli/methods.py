"""`cpt methods`: the registered methods, or one method's options with their defaults."""

from typing import Annotated, Optional

import typer
from cpt_cli.app import JsonOut, Quiet, app, command, emit_json
from rich.table import Table

from cpt.console import console
from cpt.methods import METHODS, method_class
from cpt.plan import method_options


@app.command("methods", epilog="""Examples:

  cpt methods              # every method, the task kinds it trains on, what it costs

  cpt methods scpnet       # SCPNet's options with their defaults
""")
@command
def methods_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A method: its options and defaults.")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """List the methods, or one method's options."""
    if name is None:
        rows = [{"method": m, "kinds": list(cls.kinds), "trains": cls.trains,
                 "image_features": cls.image_features,
                 "summary": cls.summary} for m, cls in METHODS.items()]
        if json_out:
            emit_json(rows)
        elif not quiet:
            table = Table(title="methods (`cpt methods NAME` for its options)")
            for col in ("method", "kinds", "trains", "image features", "what"):
                table.add_column(col)
            for r in rows:
                table.add_row(r["method"], ", ".join(r["kinds"]), "yes" if r["trains"] else "no", r["image_features"],
                              r["summary"])
            console.print(table)
        return
    cls = method_class(name)
    options = [{"option": f, "default": d, "help": h} for f, d, h in method_options(cls)]
    if json_out:
        emit_json({"method": name, "kinds": list(cls.kinds), "summary": cls.summary, "options": options})
    elif not quiet:
        table = Table(title=f"{name}: {cls.summary}\ntask kinds: {', '.join(cls.kinds)}")
        for col in ("option", "default", "what"):
            table.add_column(col)
        for o in options:
            table.add_row(o["option"], repr(o["default"]), o["help"])
        console.print(table)
