"""`cpt methods`: the registered methods, or one method's options with their defaults."""

from typing import Annotated, Optional

import typer
from cpt_cli.app import JsonOut, Quiet, app, command, emit_json
from rich.markup import escape
from rich.table import Table

from cpt.console import console
from cpt.methods import METHODS, Preset, method_class
from cpt.options import flag
from cpt.plan import method_options


def preset_row(preset: Preset) -> dict:
    """A preset as `cpt methods NAME` shows it: every value it sets, by flag."""
    return {"name": preset.name, "summary": preset.summary, "source": preset.source,
            "values": {flag(k): v for k, v in preset.values.items()}}


@app.command("methods", epilog="""Examples:

  cpt methods              # every method, the task kinds it trains on, what it costs

  cpt methods scpnet       # SCPNet's options with their defaults, and its presets with their values
""")
@command
def methods_cmd(
    name: Annotated[Optional[str], typer.Argument(help="A method: its options, defaults and presets.")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """List the methods, or one method's options and presets."""
    if name is None:
        rows = [{"method": m, "kinds": list(cls.kinds), "trains": cls.trains,
                 "image_features": cls.image_features, "presets": list(cls.presets),
                 "summary": cls.summary} for m, cls in METHODS.items()]
        if json_out:
            emit_json(rows)
        elif not quiet:
            table = Table(title="methods (`cpt methods NAME` for its options and presets)")
            for col in ("method", "kinds", "trains", "image features", "presets", "what"):
                table.add_column(col)
            for r in rows:
                table.add_row(r["method"], ", ".join(r["kinds"]), "yes" if r["trains"] else "no", r["image_features"],
                              ", ".join(r["presets"]), r["summary"])
            console.print(table)
        return
    cls = method_class(name)
    options = [{"option": f, "default": d, "help": h} for f, d, h in method_options(cls)]
    presets = [preset_row(p) for p in cls.presets.values()]
    if json_out:
        emit_json({"method": name, "kinds": list(cls.kinds), "summary": cls.summary, "options": options,
                   "presets": presets})
    elif not quiet:
        table = Table(title=f"{name}: {cls.summary}\ntask kinds: {', '.join(cls.kinds)}")
        for col in ("option", "default", "what"):
            table.add_column(col)
        for o in options:
            table.add_row(o["option"], repr(o["default"]), o["help"])
        console.print(table)
        defaults = {o["option"]: o["default"] for o in options}
        for p in presets:
            console.print(f"\n[bold]--preset {escape(p['name'])}[/]: {escape(p['summary'])}\nsource: "
                          f"{escape(p['source'])}", highlight=False)
            table = Table()
            for col in ("option", "value", "default"):
                table.add_column(col)
            for option_flag, value in p["values"].items():
                table.add_row(option_flag, repr(value), repr(defaults[option_flag]))
            console.print(table)
