"""`cpt bench`: the optimised prompt-tuning step against the naive one; SCPNet cache and step costs."""
