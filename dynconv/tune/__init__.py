"""The study: Ray Tune + Optuna over one Ray Train TorchTrainer per trial (imports Ray; an edge module)."""
