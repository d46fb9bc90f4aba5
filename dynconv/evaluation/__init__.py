"""Evaluating a model over channel subsets: result types, prediction, speed, the subset table.

- `results`: `SubsetResult`, `Evaluation`, `SpeedConfig`, `test_set_id`.
- `predict`: how a model is fed a subset; predictions over a split.
- `speed`: latency and throughput.
- `model`: `evaluate_model` (a model and data in, an `Evaluation` out), `model_from_checkpoint`.
- `tables`: the subset table printed and written as files.
- `study`: the study-level layer (pick trials, load checkpoints, evaluate, record through
  `dynconv.tracking`): `evaluate_trials`, `evaluate_study`, `evaluate_study_cli`.

Only `study` imports `dynconv.tracking`; the rest knows nothing of MLflow or Ray. This file imports
nothing, so `dynconv.tracking.evaluations` can import the result types without a cycle.
"""
