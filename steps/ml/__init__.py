"""Modelling library: model kinds and hyperparameters, the champion gate, the evaluation
report, tune's Optuna study."""
