"""``torch/optim/adam.py`` while a notebook is graded (bound over the real file in the
sandbox): the exercise is to write Adam yourself, so there is nothing to delegate to."""

from torch.optim.optimizer import Optimizer

_MESSAGE = (
    "torch.optim.Adam is not available while your notebook is graded: the exercise is to "
    "write the update yourself with tensor operations"
)


class Adam(Optimizer):
    def __init__(self, *args, **kwargs):
        raise RuntimeError(_MESSAGE)


def adam(*args, **kwargs):
    raise RuntimeError(_MESSAGE)


__all__ = ["Adam", "adam"]
