"""Evaluation: metrics, evaluating runs and backbones, reports, comparisons."""
