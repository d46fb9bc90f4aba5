"""The study: Ray Tune + Optuna; a Ray Train TorchTrainer per multi-worker trial, one-worker trials train in
their Tune trial actor (imports Ray; an edge module)."""
