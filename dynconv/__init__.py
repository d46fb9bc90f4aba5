"""dynconv: distributed hyperparameter studies of channel-flexible CNNs.

Imports nothing (importing `dynconv` must stay instant).
"""

__version__ = "0.1.0"
