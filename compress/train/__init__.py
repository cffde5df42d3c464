"""The shared training loop and evaluation helpers."""

from compress.train.config import TrainConfig as TrainConfig
from compress.train.loop import FitResult as FitResult, evaluate as evaluate, fit as fit, predict as predict
