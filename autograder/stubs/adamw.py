"""``torch/optim/adamw.py`` while a notebook is graded (bound over the real file in the
sandbox): the exercise is to write AdamW yourself, so there is nothing to delegate to."""

from torch.optim.optimizer import Optimizer

_MESSAGE = (
    "torch.optim.AdamW is not available while your notebook is graded: the exercise is to "
    "write the update yourself with tensor operations"
)


class AdamW(Optimizer):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(_MESSAGE)


def adamw(*args, **kwargs):
    raise RuntimeError(_MESSAGE)


__all__ = ["AdamW", "adamw"]
