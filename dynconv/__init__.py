"""dynconv: distributed hyperparameter studies of channel-flexible CNNs."""

__version__ = "0.1.0"
