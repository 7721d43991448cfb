"""`python -m cpt ...` (and `torchrun -m cpt ...`) runs the `cpt` command."""

from cpt_cli.main import main

main()
