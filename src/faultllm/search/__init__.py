"""Hyperparameter search: Optuna studies shared by workers, fold schedules, the search loop and its refit."""
