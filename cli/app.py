"""The Typer app and what every command shares: error handling, exit codes, output."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Annotated, Any, Callable

import pandas as pd
import typer
from rich.table import Table

from cpt import __version__
from cpt.console import console, setup
from cpt.errors import CptError
from cpt.methods import METHODS

def _version(value: bool) -> None:
    if value:
        typer.echo(f"cpt {__version__}")
        raise typer.Exit()


def new_app() -> typer.Typer:
    """An empty `cpt` app: its help lists the registered methods, and it has --version."""
    app = typer.Typer(
        name="cpt",
        help=f"Prompt tuning of CLIP from the shell. Methods: {', '.join(METHODS)} (`cpt methods` describes them). "
             "Tasks: your image folders or label files, or the built-in toy world (`cpt data`).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="markdown",  # "[default: ...]" in a help text stays text (rich markup would eat it)
    )

    @app.callback()
    def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print cpt's version and exit.")] = False) -> None:
        """Prompt tuning of CLIP from the shell."""

    return app


app = new_app()  # the commands other modules register; cpt_cli.main adds `cpt fit` to a fresh copy


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map outcomes to exit codes: 0 ok, 2 bad input or interrupted (one paragraph), 1 a bug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup(quiet=bool(kwargs.get("quiet")))
        try:
            return fn(*args, **kwargs)
        except CptError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(
                "[bold red]interrupted:[/] nothing already written was lost. A `cpt fit` run keeps the "
                "checkpoint of its last finished epoch: continue it with `cpt fit --resume RUN`.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except BrokenPipeError:  # the reader went away (`cpt predict ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except typer.Exit:
            raise
        except Exception:  # a bug: show everything
            traceback.print_exc(file=sys.stderr)
            console.print("[bold red]internal error[/] (a bug in cpt): please report it with the traceback above.")
            raise typer.Exit(1) from None

    return wrapper


def emit_json(obj: Any) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def show_metrics(metrics: pd.DataFrame, title: str) -> None:
    """A task x metric table on stderr."""
    wide = metrics.pivot_table(index="task", columns="metric", values="value", sort=False)
    table = Table(title=title)
    table.add_column("task")
    for col in wide.columns:
        table.add_column(col, justify="right")
    for task, row in wide.iterrows():
        table.add_row(str(task), *("-" if pd.isna(v) else f"{v:.0f}" if col.startswith("n_") else f"{v:.2f}"
                                   for col, v in row.items()))
    console.print(table)
