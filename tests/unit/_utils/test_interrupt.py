"""A Ctrl-C that Python drops (a finalizer, a catch-all handler) is raised again at the next step or stage."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest
import torch.nn.functional as F

from compress._utils.interrupt import check_interrupt, handling_interrupts
from compress.train import TrainConfig, fit
from tests._helpers.models import digits, tiny_vit


class _InterruptedFinalizer:
    """Delivers SIGINT while Python runs its ``__del__``: the KeyboardInterrupt is printed and dropped."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside the finalizer


def _swallowed_ctrl_c() -> None:
    _InterruptedFinalizer()
    gc.collect()


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one


def test_a_dropped_interrupt_is_raised_again_and_forgotten_afterwards() -> None:
    before = signal.getsignal(signal.SIGINT)
    with handling_interrupts():
        check_interrupt()  # nothing yet
        _swallowed_ctrl_c()  # Python's own handler would lose this one
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    assert signal.getsignal(signal.SIGINT) is before
    check_interrupt()  # the request belonged to the finished command


def test_training_stops_at_the_next_step(tmp_path) -> None:
    data = digits(tmp_path)
    steps: list[int] = []

    def ce(model, x, y):
        loss = F.cross_entropy(model(x), y)
        return loss, {"ce": loss.item()}

    def before_step(step: int) -> None:
        steps.append(step)
        if step == 2:
            _swallowed_ctrl_c()

    with handling_interrupts(), pytest.raises(KeyboardInterrupt):
        fit(tiny_vit(), ce, data, TrainConfig(epochs=1), batch_size=64, seed=0, before_step=before_step)
    assert steps == [0, 1, 2]
