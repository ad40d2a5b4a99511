"""Schedule-free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), written to be read.

No learning-rate schedule and no stopping time: the method keeps three sequences per
parameter and evaluates the gradient at an interpolation between two of them,

- ``z``: the base sequence, an Adam-style step with weight decay: z ← z - lr (g/(√v̂+ε) + λ y);
- ``x``: a running average of the ``z`` iterates, x ← (1 - c) x + c z, with
  c = w_t / Σ w (weights w_t = t^r · lr_max^p, so the steps taken during warmup weigh less);
- ``y = (1 - β1) z + β1 x``: where the gradient is computed (``β1`` plays momentum's role).

Training uses ``y``; **evaluation uses ``x``** (the average is the model that generalises).
So the parameters hold ``y`` after :meth:`ScheduleFreeAdamW.train` and ``x`` after
:meth:`ScheduleFreeAdamW.eval`; forgetting ``eval()`` evaluates the wrong point. The
arithmetic matches ``schedulefree.AdamWScheduleFreeReference`` (the authors' package),
which the tests check step by step in float64.
"""

from __future__ import annotations

import torch

__all__ = ["ScheduleFreeAdamW"]


class ScheduleFreeAdamW(torch.optim.Optimizer):
    """AdamW without a schedule: ``lr`` is constant after an optional linear warmup.

    Call ``optimizer.train()`` before training steps and ``optimizer.eval()`` before
    evaluating or saving, as with ``model.train()``/``model.eval()``.
    """

    def __init__(
        self,
        params,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0 or warmup_steps < 0:
            raise ValueError(
                f"eps, weight_decay and warmup_steps must be non-negative, got "
                f"eps={eps}, weight_decay={weight_decay}, warmup_steps={warmup_steps}"
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            r=r,
            weight_lr_power=weight_lr_power,
            step=0,  # per group, so that they travel in state_dict()
            lr_max=0.0,
            weight_sum=0.0,
        )
        super().__init__(params, defaults)
        self.training = False

    def scheduled_lr(self, group: dict) -> float:
        """The learning rate of the coming step: a linear warmup to ``lr``, then constant."""
        warmup = group["warmup_steps"]
        return group["lr"] * min(1.0, (group["step"] + 1) / warmup) if warmup else group["lr"]

    @torch.no_grad()
    def train(self) -> None:
        """Put ``y`` (where gradients are taken) into the parameters."""
        self._load("y")
        self.training = True

    @torch.no_grad()
    def eval(self) -> None:
        """Put ``x`` (the average, the model to evaluate or save) into the parameters."""
        self._load("x")
        self.training = False

    def _load(self, name: str) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if name in self.state[p]:
                    p.copy_(self.state[p][name])

    @torch.no_grad()
    def step(self, closure=None):
        if not self.training:
            raise RuntimeError(
                "ScheduleFreeAdamW.step() in eval mode: call optimizer.train() before training "
                "(and optimizer.eval() before evaluating)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            t = group["step"] + 1
            lr = self.scheduled_lr(group)
            group["lr_max"] = max(group["lr_max"], lr)
            weight = t ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
            group["weight_sum"] += weight
            c = weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
            bias_correction2 = 1 - beta2**t
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"], state["x"], state["y"] = p.clone(), p.clone(), p.clone()
                    state["v"] = torch.zeros_like(p)
                z, x, y, v = state["z"], state["x"], state["y"], state["v"]
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / bias_correction2).sqrt_().add_(group["eps"])
                z.sub_(y, alpha=lr * group["weight_decay"])  # decoupled decay, taken at y
                z.addcdiv_(p.grad, denom, value=-lr)
                x.lerp_(z, c)  # x ← (1 - c) x + c z
                y.copy_(x * beta1 + z * (1 - beta1))
                p.copy_(y)
            group["step"] = t
        return loss
