"""Training loops, evaluation, benchmarks and the ``holojax`` CLI."""

from holojax.train.config import TrainConfig
from holojax.train.loop import NonFiniteLossError, TrainResult, params_of, train

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "params_of", "train"]
