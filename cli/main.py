"""Entry point of the `cpt` console script: the app with every command registered."""

from cpt_cli import bench as _bench  # noqa: F401  (registers `cpt bench`)
from cpt_cli import data as _data  # noqa: F401  (registers `cpt data`)
from cpt_cli import eval as _eval  # noqa: F401  (registers `cpt eval`)
from cpt_cli import export as _export  # noqa: F401  (registers `cpt export`)
from cpt_cli import fit as _fit  # noqa: F401  (registers `cpt fit`)
from cpt_cli import predict as _predict  # noqa: F401  (registers `cpt predict`)
from cpt_cli import prior as _prior  # noqa: F401  (registers `cpt prior`)
from cpt_cli import sweep as _sweep  # noqa: F401  (registers `cpt sweep`)
from cpt_cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
