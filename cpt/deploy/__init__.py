"""Deployment: a run as a standalone classifier, its exports, and prediction."""
