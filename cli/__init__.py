"""The `cpt` command-line interface (installed as `cpt_cli`)."""
