"""Dataset recipes shipped with cpt (installed as `cpt_datasets`)."""
