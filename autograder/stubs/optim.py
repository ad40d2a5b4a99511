"""``torch/optim/adam.py`` and ``adamw.py`` while a notebook is graded (bound over both real
files in the sandbox): the exercise is to write the update yourself, so there is nothing to
delegate to."""

from torch.optim.optimizer import Optimizer


def _unavailable(name: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"torch.optim.{name} is not available while your notebook is graded: the exercise "
            "is to write the update yourself with tensor operations"
        )

    return refuse


Adam = type("Adam", (Optimizer,), {"__init__": _unavailable("Adam")})
AdamW = type("AdamW", (Optimizer,), {"__init__": _unavailable("AdamW")})
adam, adamw = _unavailable("adam"), _unavailable("adamw")
__all__ = ["Adam", "AdamW", "adam", "adamw"]
