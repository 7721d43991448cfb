"""Entry point of the `cpt` console script: the app with every command registered."""

import typer
from cpt_cli import bench as _bench  # noqa: F401  (registers `cpt bench`)
from cpt_cli import cache as _cache  # noqa: F401  (registers `cpt cache`)
from cpt_cli import data as _data  # noqa: F401  (registers `cpt data`)
from cpt_cli import eval as _eval  # noqa: F401  (registers `cpt eval`)
from cpt_cli import export as _export  # noqa: F401  (registers `cpt export`)
from cpt_cli import index as _index  # noqa: F401  (registers `cpt index`)
from cpt_cli import methods as _methods  # noqa: F401  (registers `cpt methods`)
from cpt_cli import predict as _predict  # noqa: F401  (registers `cpt predict`)
from cpt_cli import prior as _prior  # noqa: F401  (registers `cpt prior`)
from cpt_cli import sweep as _sweep  # noqa: F401  (registers `cpt sweep`)
from cpt_cli.app import app as commands
from cpt_cli.app import new_app, plain_help
from cpt_cli.fit import EPILOG, fit_command


def make_app() -> typer.Typer:
    """The whole app; `cpt fit` takes the options of every method registered at this moment."""
    app = new_app()
    app.command("fit", epilog=EPILOG)(fit_command())
    app.registered_commands += commands.registered_commands
    plain_help(app)
    return app


app = make_app()


def main() -> None:
    """The `cpt` console script."""
    make_app()()


__all__ = ["app", "main", "make_app"]

if __name__ == "__main__":
    main()
