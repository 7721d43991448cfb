"""Data: tasks and their splits, label files, partial labels, recipes, the feature cache."""
