"""Comparing models: classical baselines, metrics, calibration, statistics across runs, tables and plots."""
