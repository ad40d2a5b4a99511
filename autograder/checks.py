"""The judge half, which never enters the sandbox: each check the test cells call,
``grading.check_<name>(answer, ...)``, is one function that makes its inputs as plain data,
names the protocol that observes the answer on them (:mod:`autograder.observe`) and judges
the observation against the references it computes. :func:`autograder.grading.run_check`
runs it in the current mode. An observation is untrusted: a field of the wrong kind raises
:func:`~autograder.common.malformed`; ``run_check`` turns anything else a judge raises on it
into that message.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from autograder.common import (
    DTYPE_NAMES,
    FLOAT_RTOL,
    MAX_ITEMS,
    MAX_TEXT,
    RTOL,
    GradingError,
    device_name,
    malformed,
    text,
)
from autograder.delegation import refusal
from autograder.grading import run_check

# -- Reading an observation. ----------------------------------------------------------------------


def field(obs: Any, key: str, kind: type | tuple[type, ...] = dict) -> Any:
    value = obs.get(key) if isinstance(obs, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise malformed(f"{key} is missing or of the wrong type")
    return value


def entries(obs: Any, key: str, made: int) -> list[Any]:
    """A recorded list of at most ``made`` entries (fewer where the observation stopped)."""
    value = field(obs, key, list)
    if len(value) > made:
        raise malformed(f"{key} has {len(value)} entries, more than the {made} made")
    return value


class Short(Exception):
    """The recorded data end before what was made: the observation's stop says why."""


def until_stop(recorded: list, made: Iterable) -> Iterator[tuple]:
    """(record, what was made) in order; :class:`Short` at the first made without a record."""
    for index, item in enumerate(made):
        if index >= len(recorded):
            raise Short
        yield recorded[index], item


def texts(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise malformed("a list of texts is not a short list")
    return [text(x) for x in value]


def type_name(desc: Any) -> str:
    return text(desc.get("type"), 200).rsplit(".", 1)[-1]


def number(desc: Any, what: str) -> int | float:
    """The number a described answer is: an ``int`` stays one (compared exactly)."""
    if "number" not in desc:
        if desc.get("kind") == "Tensor":
            shape = tuple(field(desc, "shape", list))
            raise GradingError(
                f"{what} should be one number, got a tensor of shape {shape}"[:MAX_TEXT]
            )
        raise GradingError(
            f"{what} should be a number, got {type_name(desc)}: {text(desc.get('repr'))}"
        )
    got = desc["number"]
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise malformed(f"{what} is not a number")
    return got


def values(data: Any, what: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Recorded tensor data (nested lists) of the ``shape`` the observation made."""
    got = torch.tensor(data, dtype=torch.float64)
    if tuple(got.shape) != tuple(shape):
        raise malformed(f"{what} does not hold values of shape {tuple(shape)}")
    return got.to(dtype)


def tensor(desc: Any, what: str, shape: Sequence[int], dtype: torch.dtype, device: str) -> Tensor:
    """A described tensor like the parameter (shape, dtype, device), with its values."""
    if desc.get("kind") != "Tensor":
        raise GradingError(f"{what} should be a torch.Tensor, got {type_name(desc)}")
    got = tuple(field(desc, "shape", list))
    if got != tuple(shape):
        raise GradingError(f"{what} has shape {got}; expected {tuple(shape)}"[:MAX_TEXT])
    place = torch.device(device)  # as a tensor reports it: cuda is cuda:0
    place = "cpu" if place.type == "cpu" else f"{place.type}:{place.index or 0}"
    for key, want, verb in (("dtype", str(dtype), "has dtype"), ("device", place, "is on")):
        if text(desc.get(key), 100) != want:
            raise GradingError(
                f"{what} {verb} {text(desc.get(key), 100)}; expected {want}, the parameter's {key}"
            )
    return values(desc.get("data"), what, shape, dtype)


def stopped(obs: dict, name: str, inputs: dict) -> None:
    """Raise why the observation ended where its data end."""
    stop = obs.get("stop")
    if not isinstance(stop, dict):
        raise malformed("the recorded data end early without a reason")
    kind, call = stop.get("kind"), stop.get("call", "call")
    if kind == "refused":
        hits = dict.fromkeys(texts(stop.get("hits")))
        raise refusal(name, [f"running it called {hit}" for hit in hits])
    if kind == "raised" and call in ("call", "init", "step"):
        what = f"{name}.step" if call == "step" else name
        raise GradingError(f"{what} raised {text(stop.get('error'))}")
    if kind == "crash":
        raise GradingError(
            f"{name}: looking at its results raised {text(stop.get('error'))}; return plain "
            "tensors, numbers and containers"
        )
    if kind == "not_optimizer":
        got = text(stop.get("type"), 200)
        raise GradingError(f"{name}(...) should be a torch.optim.Optimizer, got {got}")
    if kind == "bad_result" and "moments" in inputs:  # an update's, in its last run
        run = inputs["runs"][len(field(obs, "runs", list)) - 1]
        like = (torch.tensor(run["start"]).shape, getattr(torch, run["dtype"]), inputs["device"])
        desc = field(stop, "result")
        if desc.get("kind") not in ("tuple", "list") or desc.get("size") != 3:
            length = f" of length {desc['size']}" if isinstance(desc.get("size"), int) else ""
            raise GradingError(
                f"{name} should return the tuple (param, m, v) of new tensors; got "
                f"{type_name(desc)}{length}"
            )
        for item, what in zip(entries(desc, "items", 3), ("param", "m", "v"), strict=True):
            tensor(item, f"the returned {what}", *like)
    raise malformed("it stopped for an unknown reason")


def _check(check: str, protocol: str, answer: Any, inputs: dict, judge: Callable, name: str):
    """Run a check in the current mode. ``judge(obs)`` runs once what the observation saw of
    the answer itself passed (an optimizer class, no delegation); where it finds the data
    short (:class:`Short`), and after it, a recorded stop raises why the observation ended."""

    def judged(obs: dict) -> None:
        if protocol == "optimizer" and field(obs, "class").get("ok") is not True:
            got = text(obs["class"].get("repr"))
            raise GradingError(
                f"{name} should be a class derived from torch.optim.Optimizer, got {got}"
            )
        reasons = [] if protocol == "value" else texts(field(obs, "delegation", list))
        if reasons:
            raise refusal(name, reasons)
        try:
            judge(obs)
        except Short:
            stopped(obs, name, inputs)
        if obs.get("stop") is not None:
            stopped(obs, name, inputs)

    run_check(check, protocol, answer, inputs, judged, name=name, kind=inputs.get("kind"))


# -- Comparing, with messages a student can act on. -----------------------------------------------


def relative_error(got: Tensor, expected: Tensor) -> Tensor:
    """``|got - expected| / max(|expected|, 1)`` elementwise, in float64; NaN counts as inf."""
    got64, exp64 = got.detach().cpu().double(), expected.detach().cpu().double()
    error = (got64 - exp64).abs() / exp64.abs().clamp_min(1.0)
    return torch.nan_to_num(error, nan=math.inf, posinf=math.inf)


def mismatch(got: Tensor, expected: Tensor) -> str | None:
    """None when every element is within ``rtol * max(|expected|, 1)`` (``rtol`` of the
    expected dtype), else the worst one."""
    error, rtol = relative_error(got, expected), RTOL[expected.dtype]
    if error.numel() == 0 or error.max().item() <= rtol:
        return None
    index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    g, e = got.detach()[index].item(), expected.detach()[index].item()
    return (
        f"{f'element {index}' if index else 'value'}: expected {e:.10g}, got {g:.10g} "
        f"(difference {abs(g - e):.3g}; allowed {rtol:.0e} x max(|expected|, 1) for "
        f"{DTYPE_NAMES.get(got.dtype, got.dtype)})"
    )


def disagreement(
    got: float, expected: Any, rtol: float, atol: float = 0.0, unit: str = ""
) -> str | None:
    """None when ``got`` agrees with ``expected``, else ``"expected E, got G (how compared)"``.
    An ``int`` expected (byte and block counts, step numbers) agrees only with the same
    integer; other numbers within ``max(rtol * |expected|, atol)`` (NaN never agrees)."""
    if type(expected) is int:
        if got != expected:
            return f"expected {expected}{unit}, got {got!r}{unit} (compared exactly: an integer)"
        return None
    got, expected = float(got), float(expected)
    if math.isfinite(got) and abs(got - expected) <= max(rtol * abs(expected), atol):
        return None
    return f"expected {expected:.10g}{unit}, got {got:.10g}{unit} (allowed relative error {rtol:g})"


# -- Adam's update, and the mistakes students make. -----------------------------------------------

# The mistakes a probe can name, each with its hint, in the order they are tried: Adam's
# and AdamW's update, Adam's weight decay, AdamW's.
UPDATE_MISTAKES: dict[str, str] = {
    "no_bias_correction": (
        "your result matches Adam without bias correction: after {t} steps the bias correction "
        "of m should be 1 - {b1}**{t} = {bc1:.5g} (and of v 1 - {b2}**{t} = {bc2:.5g}); yours "
        "is 1.0. Divide m by 1 - beta1**step and v by 1 - beta2**step."
    ),
    "step_plus_one": (
        "your result matches a bias correction one step ahead: after {t} steps it should be "
        "1 - {b1}**{t} = {bc1:.5g}; yours is 1 - {b1}**{t1} = {bc1_next:.5g}. Is `step` "
        "incremented before it is used (or counted from 1 and incremented again)? step is the "
        "number of this update: 1 for the first."
    ),
    "eps_inside_sqrt": (
        "your result matches eps inside the square root: the update is "
        "m_hat / (sqrt(v_hat) + eps), with eps added after the square root."
    ),
    "eps_before_bias_correction": (
        "your result matches eps added before the bias correction of v: the denominator is "
        "sqrt(v / (1 - beta2**step)) + eps, eps added last."
    ),
    "betas_swapped": (
        "your moving averages put the weights the wrong way round: m = beta1 * m + "
        "(1 - beta1) * grad, and v = beta2 * v + (1 - beta2) * grad**2."
    ),
    "v_not_squared": "your v averages |grad| instead of grad**2.",
    "no_sqrt": "your update divides by v_hat instead of sqrt(v_hat).",
}
ADAM_MISTAKES = {
    "no_weight_decay": (
        "your result matches weight_decay being ignored: Adam adds weight_decay * param to "
        "the gradient before the moving averages."
    ),
    "decoupled_in_adam": (
        "your weight decay is decoupled (AdamW's): this is Adam, whose weight_decay adds "
        "weight_decay * param to the gradient before the moving averages (as torch.optim.Adam)."
    ),
}
ADAMW_MISTAKES = {
    "coupled": (
        "your result matches weight decay added to the gradient (Adam's L2 penalty, "
        "grad + weight_decay * param). AdamW decouples it: first param *= 1 - lr * "
        "weight_decay, then the Adam step with the plain gradient."
    ),
    "decay_without_lr": (
        "your weight decay is not scaled by the learning rate: torch.optim.AdamW multiplies "
        "the weights by 1 - lr * weight_decay, not 1 - weight_decay."
    ),
    "decay_after_update": (
        "your weight decay is applied after the Adam step; torch.optim.AdamW shrinks the "
        "weights first (param *= 1 - lr * weight_decay), then subtracts the Adam update."
    ),
    "lr_cached": (
        "after the learning rate was changed in param_groups (before step {t}), your optimizer "
        "kept the old one: read group['lr'] inside step(), every step (schedulers change it)."
    ),
}
MISTAKES = {**UPDATE_MISTAKES, **ADAM_MISTAKES, **ADAMW_MISTAKES}


def reference_update(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, *, lr: float, beta1: float,
    beta2: float, eps: float, weight_decay: float, decoupled: bool, mistake: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip # the hyperparameters on two lines, as in torch
    """One Adam (or, ``decoupled``, AdamW) update in float64, optionally with one mistake."""
    t += mistake == "step_plus_one"
    decay = 0.0 if mistake == "no_weight_decay" else weight_decay
    decoupled = {"coupled": False, "decoupled_in_adam": True}.get(mistake, decoupled)
    after = decoupled and mistake == "decay_after_update"
    if not decoupled:
        g = g + decay * p
    elif mistake == "decay_without_lr":
        p = p * (1 - decay)
    elif not after:
        p = p * (1 - lr * decay)
    if mistake == "betas_swapped":
        m, v = beta1 * g + (1 - beta1) * m, beta2 * g * g + (1 - beta2) * v
    else:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g.abs() if mistake == "v_not_squared" else g * g)
    bc1, bc2 = (1.0, 1.0) if mistake == "no_bias_correction" else (1 - beta1**t, 1 - beta2**t)
    denom = {
        "eps_inside_sqrt": lambda: (v / bc2 + eps).sqrt(),
        "eps_before_bias_correction": lambda: (v.sqrt() + eps) / math.sqrt(bc2),
        "no_sqrt": lambda: v / bc2 + eps,
    }.get(mistake, lambda: (v / bc2).sqrt() + eps)()
    p = p - lr * (m / bc1) / denom
    if after:
        p = p * (1 - lr * decay)
    return p, m, v


def hint(mistake: str, t: int, beta1: float, beta2: float) -> str:
    template = MISTAKES[mistake].replace("{t} steps", "{t} step" + "s" * (t != 1))
    return template.format(
        t=t, t1=t + 1, b1=beta1, b2=beta2, bc1=1 - beta1**t, bc2=1 - beta2**t,
        bc1_next=1 - beta1 ** (t + 1),
    )  # fmt: skip # the values of the template's fields, not one a line


def trajectory(probe: Probe, decoupled: bool, mistake: str | None = None) -> list[tuple]:
    """(param, m, v) after every update of a probe, in float64, optionally with a mistake."""
    p = torch.tensor(probe.start, dtype=torch.float64)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    out = []
    for t, grad in enumerate(probe.grads(), start=1):
        hyper = probe.hyper(1 if mistake == "lr_cached" else t)
        g = torch.tensor(grad, dtype=torch.float64)
        p, m, v = reference_update(
            p, g, m, v, t, **hyper, decoupled=decoupled,
            mistake=None if mistake == "lr_cached" else mistake,
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        out.append((p, m, v))
    return out


def diagnose(got: list[Tensor], probe: Probe, decoupled: bool) -> str | None:
    """The first mistake, in the order tried, that this probe tells apart from a correct answer
    (its trajectory differs by more than 1e-7) and whose trajectory ``got`` matches (within
    1e-7, and closer than to the correct one): without weight decay, Adam's L2 penalty and
    AdamW's decoupled decay are the same trajectory, and neither is named."""

    def distance(a: list[Tensor], b: list[Tensor]) -> float:  # over the steps of the shorter
        errors = [relative_error(x, y).max().item() for x, y in zip(a, b, strict=False)]
        return max(errors, default=0.0)

    correct = [p for p, _, _ in trajectory(probe, decoupled)][: len(got)]
    order = (*ADAMW_MISTAKES, *UPDATE_MISTAKES) if decoupled else (*UPDATE_MISTAKES, *ADAM_MISTAKES)
    for mistake in order:
        expected = [p for p, _, _ in trajectory(probe, decoupled, mistake)]
        near = distance(got, expected)
        if distance(expected, correct) > 1e-7 and near <= 1e-7 and near < distance(got, correct):
            return mistake
    return None


def first_nonfinite_hint(t: int) -> str:
    if t == 1:
        return (
            " The first update is not finite: if the bias correction is 1 - beta**(step - 1), "
            "it is 0 at the first update. step is the number of this update, 1 for the first: "
            "is `step` used before it is incremented?"
        )
    return " A value became inf or NaN: check for a division by a quantity that can be 0."


def torch_effective_steps(
    grads: Sequence[float], *, lr: float, betas: tuple[float, float], eps: float
) -> Tensor:
    """|update_t| / lr of ``torch.optim.Adam`` on one float64 scalar fed ``grads`` in order."""
    run = {"dtype": "float64", "params": [0.0], "groups": [{"params": [0]}]}
    run["kwargs"] = {"lr": lr, "betas": tuple(betas), "eps": eps}
    run["steps"] = [{"grads": [float(g)]} for g in grads]
    path = [0.0] + [params[0].item() for params in _replay(run, adamw=False)]
    return torch.tensor([abs(b - a) / lr for a, b in pairwise(path)], dtype=torch.float64)


# -- The inputs: small probes where each known mistake shows, random cases against torch. ---------

Case = tuple[Sequence[Any], dict[str, Any]]
F64 = torch.float64


@dataclass
class Probe:
    """A small float64 problem where each known mistake gives a visibly different result."""

    lr: float = 0.1
    beta1: float = 0.8
    beta2: float = 0.95
    eps: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 6
    lr_change_at: int | None = None  # 0-based step before which lr is halved
    start: Sequence[float] = (0.5, -1.5, 0.02)

    @classmethod
    def draw(cls, rng: random.Random, seed: int | None, **overrides: Any) -> Probe:
        """The probe the notebooks describe when ``seed`` is None, else a random one."""
        if seed is None:
            return cls(**overrides)
        drawn = {
            "lr": rng.choice([0.05, 0.1, 0.2]),
            "beta1": rng.choice([0.7, 0.8, 0.85]),
            "beta2": rng.choice([0.9, 0.95, 0.97]),
            "eps": rng.choice([1e-3, 3e-3]),
            "start": [rng.uniform(0.2, 1.0), -rng.uniform(0.5, 2.0), rng.uniform(-0.05, 0.05)],
        }
        return cls(**{**drawn, **overrides})

    def grads(self) -> list[list[float]]:
        """The gradient fed at each update: mixed signs and sizes."""
        return [[0.3 + 0.1 * t, (-1.0) ** t * 2.0, 0.002 * t] for t in range(1, self.steps + 1)]

    def hyper(self, t: int) -> dict[str, float]:
        """adam_update's keywords at update ``t`` (1-based)."""
        halved = self.lr_change_at is not None and t - 1 >= self.lr_change_at
        hyper = {k: getattr(self, k) for k in ("lr", "beta1", "beta2", "eps", "weight_decay")}
        return {**hyper, "lr": self.lr * 0.5 if halved else self.lr}

    def settings(self) -> str:
        at = self.lr_change_at
        return (
            f"lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
            f"weight_decay={self.weight_decay}, start={[round(x, 4) for x in self.start]}"
            + ("" if at is None else f", lr halved before update {at + 1}")
        )


def _probes(seed: int | None, adamw: bool) -> list[Probe]:
    """Without, then with weight decay (for AdamW, and an lr change); ``seed=None``: the
    fixed probes the notebooks describe."""
    rng = random.Random(seed)
    if not adamw:
        return [Probe.draw(rng, seed), Probe.draw(rng, seed, weight_decay=0.1)]
    first = Probe.draw(rng, seed, steps=5)
    decay = {"weight_decay": 0.2, "lr_change_at": 5}
    if seed is not None:
        decay = {"weight_decay": rng.choice([0.1, 0.2, 0.3]), "lr_change_at": rng.randint(3, 6)}
    return [first, Probe.draw(rng, seed, steps=8, **decay)]


def random_shape(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randint(1, 5) for _ in range(rng.randint(0, 3)))


def random_hyper(rng: random.Random) -> dict[str, Any]:
    """A parameter group's options (drawn lr, beta1, beta2, eps, weight_decay)."""
    lr = 10 ** rng.uniform(-4, -1)
    beta1 = rng.choice([0.0, 0.5, 0.9, rng.uniform(0.0, 0.99)])
    beta2 = rng.choice([0.95, 0.999, rng.uniform(0.9, 0.9999)])
    eps, weight_decay = rng.choice([1e-8, 1e-6, 1e-3]), rng.choice([0.0, 1e-4, 0.05, 0.1])
    return {"lr": lr, "eps": eps, "weight_decay": weight_decay, "betas": (beta1, beta2)}


def randn(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype, scale: float = 1.0):
    return (torch.randn(tuple(shape), generator=gen, dtype=F64) * scale).to(dtype)


# -- Assignments `adam` and `adamw`: a functional update (protocol `update`) and an optimizer
# class (protocol `optimizer`), on small probes and on random runs against torch. -----------------


def _adam(check: str, answer: Any, device: str, runs: list, judge: Any, moments: Any = None):
    """Observe ``adam_update`` (protocol `update`, recording m and v too when ``moments``)
    or, with ``moments=None``, the class ``AdamW`` (protocol `optimizer`)."""
    inputs = {"device": device, "kind": "optimizer", "runs": runs}
    if moments is None:
        _check(check, "optimizer", answer, inputs, judge, "AdamW")
    else:
        _check(check, "update", answer, {**inputs, "moments": moments}, judge, "adam_update")


def _steps(run: Any, steps: int) -> list:
    """What a run recorded after each of its steps (at most ``steps``): an update's list, an
    optimizer's ``params``; the error when the constructor raised."""
    if isinstance(run, dict) and isinstance(run.get("error"), dict):
        raise GradingError(f"AdamW raised {text(run['error'].get('text'))}")
    return entries(run if isinstance(run, dict) else {"params": run}, "params", steps)


def _probe_error(
    call: str, probe: Probe, t: int, what: str, got: Tensor, want: Tensor, params: list, adamw: bool
) -> None:
    """When ``got`` (the ``what`` after update ``t``) is wrong: the error, naming the mistake
    the parameter's trajectory so far matches, if the probe can tell it."""
    wrong = mismatch(got, want)
    if wrong is None:
        return
    message = f"{call}: after step {t} the {what} is wrong, {wrong}."
    if not torch.isfinite(got).all():
        raise GradingError(message + first_nonfinite_hint(t))
    mistake = diagnose(params, probe, adamw)
    if mistake:  # lr_cached is told apart only on a probe whose lr changes
        at = probe.lr_change_at + 1 if mistake == "lr_cached" else t
        message += " Likely mistake: " + hint(mistake, at, probe.beta1, probe.beta2)
    elif what == "returned m":
        message += " m = beta1 * m + (1 - beta1) * grad (with Adam's weight decay added to grad)."
    elif what == "returned v":
        message += " v = beta2 * v + (1 - beta2) * grad**2 (with Adam's weight decay added first)."
    raise GradingError(message)


def check_adam_first_steps(
    adam_update: Any, *, device: Any = None, seed: int | None = None
) -> None:
    """A few updates on a 3-element float64 parameter, without then with weight decay: ``m``,
    ``v`` and the parameter after each, with the usual mistakes named."""
    probes, device = _probes(seed, adamw=False), device_name(device)
    runs = [
        {"dtype": "float64", "start": p.start, "hyper": p.hyper(1), "grads": p.grads()}
        for p in probes
    ]

    def judge(obs: dict) -> None:
        for run, probe in until_stop(entries(obs, "runs", len(probes)), probes):
            call, params = f"adam_update({probe.settings()}, float64)", []
            steps = until_stop(_steps(run, probe.steps), trajectory(probe, False))
            for t, (step, want) in enumerate(steps, start=1):
                p, m, v = (values(x, "a result", (3,), F64) for x in step)
                params.append(p)
                for what, got, i in (("m", m, 1), ("v", v, 2), ("param", p, 0)):
                    _probe_error(call, probe, t, f"returned {what}", got, want[i], params, False)

    _adam("adam_first_steps", adam_update, device, runs, judge, moments=True)


def check_adamw_first_steps(AdamW: Any, *, device: Any = None, seed: int | None = None) -> None:
    """A 3-element float64 parameter over a few steps, with weight decay and an lr change."""
    probes, runs = _probes(seed, adamw=True), []
    for p in probes:
        kwargs = {"lr": p.lr, "betas": (p.beta1, p.beta2), "eps": p.eps}
        kwargs["weight_decay"] = p.weight_decay
        steps = [{"lr": p.hyper(t)["lr"], "grads": [g]} for t, g in enumerate(p.grads(), 1)]
        runs.append({"dtype": "float64", "params": [p.start], "kwargs": kwargs, "steps": steps})

    def judge(obs: dict) -> None:
        for run, probe in until_stop(entries(obs, "runs", len(probes)), probes):
            steps = _steps(run, probe.steps)
            if len(steps) < probe.steps:
                raise Short  # before its steps are compared
            got = [values(step[0], "the parameter", (3,), F64) for step in steps]
            call = f"AdamW([p], {probe.settings()}) on float64"
            for t, (want, _, _) in enumerate(trajectory(probe, True), start=1):
                _probe_error(call, probe, t, "parameter", got[t - 1], want, got, True)

    _adam("adamw_first_steps", AdamW, device_name(device), runs, judge)


def _torch_runs(
    seed: int, cases: int, steps: int, dtypes: Sequence[Any], adamw: bool
) -> list[tuple[dict[str, Any], str]]:
    """Random runs as the `optimizer` protocol takes them, each with how it was made (the
    draws in a fixed order: a seed always makes the same runs). Adam's: one parameter and
    gradients of one scale; AdamW's: parameters in groups (parameter i in group i % n), some
    gradients None, every group's lr multiplied by a factor once."""
    if not set(dtypes) <= set(DTYPE_NAMES):
        raise ValueError(f"No tolerance for {dtypes}: the checks use float32 and float64")
    rng, gen, made = random.Random(seed), torch.Generator().manual_seed(seed), []
    for index in range(cases):
        dtype = dtypes[index % len(dtypes)]
        if adamw:
            shapes = [random_shape(rng) for _ in range(rng.randint(2, 5))]
            groups = [random_hyper(rng) for _ in range(rng.randint(1, min(3, len(shapes))))]
            if len(groups) > 1:
                del groups[-1]["weight_decay"]  # this group takes the constructor's default
            common = {"lr": 10 ** rng.uniform(-4, -2), "weight_decay": rng.choice([0.01, 0.1])}
            del groups[0]["lr"]  # and this one the constructor's lr
            change_at = rng.randint(steps // 3, 2 * steps // 3)
            factor, none_every = rng.choice([0.1, 0.3, 2.0]), rng.choice([5, 7, 11])
            scales = [10.0 ** (i % 3 - 1) for i in range(len(shapes))]
            about = f"{len(shapes)} parameters of shapes {shapes} in {len(groups)} group(s); "
            about += f"constructor {common}"
        else:
            shapes, groups, common = [random_shape(rng)], [random_hyper(rng)], {}
            change_at, none_every = None, 0
            scales = [10 ** rng.choice([-2, -1, 0, 1])]
            about = f"shape {shapes[0]}, gradients of scale {scales[0]:g}"
        params = [randn(gen, s, dtype).tolist() for s in shapes]
        run_steps = [{"grads": []} for _ in range(steps)]
        for t, step in enumerate(run_steps):
            for i, s in enumerate(shapes):
                none = none_every and (t + i) % none_every == 0
                step["grads"].append(None if none else randn(gen, s, dtype, scales[i]).tolist())
        if change_at is not None:
            run_steps[change_at]["lr_factor"] = factor
        n = len(groups)
        groups = [{"params": list(range(len(shapes)))[i::n], **g} for i, g in enumerate(groups)]
        run = {"dtype": DTYPE_NAMES[dtype], "params": params, "groups": groups,
               "kwargs": common, "steps": run_steps}  # fmt: skip # the run's parts by meaning
        made.append((run, f"{about}, {DTYPE_NAMES[dtype]}"))
    return made


def _replay(run: dict[str, Any], adamw: bool) -> Iterator[list[Tensor]]:
    """torch's optimizer stepped on a run as the `optimizer` protocol steps the answer (on
    the CPU): its parameters after every step."""
    dtype = getattr(torch, run["dtype"])
    params = [torch.tensor(x, dtype=dtype, requires_grad=True) for x in run["params"]]
    groups = [{**g, "params": [params[i] for i in g["params"]]} for g in run["groups"]]
    optimizer = torch.optim.AdamW if adamw else torch.optim.Adam
    reference = optimizer(groups, **run["kwargs"], foreach=False)
    for step in run["steps"]:
        for group in reference.param_groups:
            group["lr"] = group["lr"] * step.get("lr_factor", 1.0)
        for p, g in zip(params, step["grads"], strict=True):
            p.grad = None if g is None else torch.tensor(g, dtype=dtype)
        reference.step()
        yield [p.detach().clone() for p in params]


def _notes(run: dict[str, Any], step: int, i: int) -> str:
    """The events of the run so far that a wrong answer may have mishandled."""
    out, so_far = [], run["steps"][: step + 1]
    for t, s in enumerate(so_far):
        if "lr_factor" in s:
            out.append(f"every group's lr was multiplied by {s['lr_factor']} before step {t + 1}")
    nones = [t + 1 for t, s in enumerate(so_far) if s["grads"][i] is None]
    if nones:
        shown = ", ".join(map(str, nones[:10])) + ", ..." * (len(nones) > 10)
        out.append(
            f"parameter {i} had grad None at steps {shown} (it must be skipped then, its "
            "state untouched)"
        )
    return " Notes: " + "; ".join(out) + "." if out else ""


def _against_torch(
    answer: Any, adamw: bool, device: Any, seed: int, cases: int, steps: int, dtypes: Sequence
) -> None:
    """The answer stepped as torch's optimizer on random runs, compared after every step."""
    made, device = _torch_runs(seed, cases, steps, dtypes, adamw), device_name(device)
    name, reference = ("AdamW", "AdamW") if adamw else ("adam_update", "Adam")
    advice = " Run check_adamw_first_steps for a diagnosis on a small example." if adamw else ""

    def judge(obs: dict) -> None:
        recorded = until_stop(entries(obs, "runs", cases), made)
        for index, (history, (run, about)) in enumerate(recorded):
            pairs = until_stop(_steps(history, steps), _replay(run, adamw))
            for step, (got_row, want_row) in enumerate(pairs):
                for i, (got, want) in enumerate(zip(got_row, want_row, strict=True)):
                    a = values(got, f"parameter {i}", want.shape, want.dtype)
                    wrong = mismatch(a, want)
                    if wrong is None:
                        continue
                    group = i % len(run["groups"])
                    settings = {k: v for k, v in run["groups"][group].items() if k != "params"}
                    raise GradingError(
                        f"{name} against torch.optim.{reference} (seed {seed}, case {index}: "
                        f"{about} on {device}, group {group} settings {settings}): after step "
                        f"{step + 1}, parameter {i} differs, {wrong}."
                        + _notes(run, step, i)
                        + (first_nonfinite_hint(step + 1) if not torch.isfinite(a).all() else "")
                        + advice
                    )

    runs = [run for run, _ in made]
    if adamw:
        _adam("adamw_against_torch", answer, device, runs, judge)
        return
    for i, run in enumerate(runs):  # adam_update's: one parameter, its group's options as keywords
        hyper = {k: v for k, v in run["groups"][0].items() if k != "params"}
        hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
        grads = [step["grads"][0] for step in run["steps"]]
        runs[i] = {"dtype": run["dtype"], "start": run["params"][0], "grads": grads, "hyper": hyper}
    _adam("adam_against_torch", answer, device, runs, judge, moments=False)


def check_adam_against_torch(
    adam_update: Any,
    *,
    device: Any = None,
    seed: int = 0,
    cases: int = 3,
    steps: int = 100,
    dtypes: Sequence[Any] = (torch.float64, torch.float32),
) -> None:
    """Random shapes and hyperparameters, ``steps`` updates each, against ``torch.optim.Adam``."""
    _against_torch(adam_update, False, device, seed, cases, steps, dtypes)


def check_adamw_against_torch(
    AdamW: Any,
    *,
    device: Any = None,
    seed: int = 0,
    cases: int = 2,
    steps: int = 100,
    dtypes: Sequence[Any] = (torch.float64, torch.float32),
) -> None:
    """Random shapes, hyperparameters and parameter groups, the learning rate changed mid-run,
    some gradients ``None``: ``steps`` steps against ``torch.optim.AdamW``, after every step."""
    _against_torch(AdamW, True, device, seed, cases, steps, dtypes)


def check_effective_steps(
    effective_steps: Any,
    sequences: Sequence[Sequence[float]],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """``effective_steps(grads, lr=, beta1=, beta2=, eps=)``: |update| / lr of torch's Adam."""
    settings = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps}
    cases = [(([float(g) for g in grads],), settings) for grads in sequences]

    def judge_one(result: Any, call: str, case: tuple) -> None:
        grads, kind = case[0][0], result.get("kind") if isinstance(result, dict) else None
        if kind == "Tensor":
            got = values(result.get("data"), "the values", field(result, "shape", list), F64)
            got, count = got.flatten().tolist(), got.numel()
        elif kind in ("list", "tuple"):
            got, count = entries(result, "items", 100), field(result, "size", int)
        else:
            raise GradingError(
                "effective_steps should return a list or 1-d tensor of numbers, got "
                f"{type_name(result)}"
            )
        if count != len(grads):
            raise GradingError(
                f"effective_steps returned {count} values for {len(grads)} gradients: one per step"
            )
        if kind != "Tensor":
            got = [number(x, f"effective_steps's value {k}") for k, x in enumerate(got)]
        expected = torch_effective_steps(grads, lr=lr, betas=betas, eps=eps).tolist()
        for t, (a, b) in enumerate(zip(got, expected, strict=True), start=1):
            wrong = disagreement(a, b, rtol, 1e-12)
            if wrong:
                shown = ", ".join(f"{x:g}" for x in grads[:6]) + ", ..." * (len(grads) > 6)
                raise GradingError(
                    f"effective_steps([{shown}], lr={lr}, beta1={betas[0]}, beta2={betas[1]}, "
                    f"eps={eps}): at step {t} {wrong}. The effective step is "
                    "|theta_t - theta_(t-1)| / lr, from a fresh optimizer, gradients fed in "
                    "order."
                )

    _calls("effective_steps", effective_steps, "effective_steps", cases, "optimizer", judge_one)


def check_adamw_constructor(AdamW: Any, *, seed: int | None = None) -> None:
    """Defaults like torch's (one step made with them), and ``ValueError`` for
    hyperparameters out of range (``seed=None``: the first value of each list)."""
    rng = random.Random(seed)

    def pick(options: list[float]) -> float:
        return options[0] if seed is None else rng.choice(options)

    cases = [
        ({"lr": -pick([1e-3, 0.5, 2.0])}, "lr"),
        ({"eps": -pick([1e-8, 1e-3])}, "eps"),
        ({"betas": (pick([1.0, 1.5, -0.1]), 0.999)}, "betas[0]"),
        ({"betas": (0.9, pick([1.0, 1.2, -0.5]))}, "betas[1]"),
        ({"weight_decay": -pick([1e-2, 0.3])}, "weight_decay"),
    ]
    if seed is not None:
        rng.shuffle(cases)
    one = {"dtype": "float32", "params": [[0.0, 0.0]]}
    runs = [{**one, "kwargs": {}, "defaults": True, "steps": [{"grads": [[1.0, 1.0]]}]}]
    runs += [{**one, "kwargs": kwargs, "steps": []} for kwargs, _ in cases]

    def judge(obs: dict) -> None:
        recorded = entries(obs, "runs", len(runs))
        if not recorded or not _steps(recorded[0], 1):
            raise Short
        defaults = field(recorded[0], "defaults").get("items")
        expected = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
        for key, value in expected.items():
            got = defaults.get(key) if isinstance(defaults, dict) else None
            if not isinstance(got, dict):
                raise GradingError(
                    f"param_groups[0] has no {key!r}: pass the hyperparameters as the defaults "
                    "dict to torch.optim.Optimizer.__init__(params, defaults)"
                )
            if got.get("kind") in ("tuple", "list"):
                plain = [x.get("number") for x in field(got, "items", list)]
            else:
                plain = got.get("number") if got.get("kind") in ("int", "float") else None
            if plain != (list(value) if key == "betas" else value):
                raise GradingError(
                    f"the default {key} should be {value} (as torch.optim.AdamW), got "
                    f"{text(got.get('repr'))}"
                )
        for run, (kwargs, what) in until_stop(recorded[1:], cases):
            error = run.get("error")
            call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            if error is None:
                raise GradingError(
                    f"AdamW([p], {call}) was accepted: an invalid {what} should raise ValueError, "
                    f"as torch.optim.AdamW does (e.g. ValueError('Invalid learning rate: -0.5'))"
                )
            if field(error, "value_error", bool) is not True:
                raise GradingError(
                    f"AdamW([p], {call}) raised {text(error.get('text'))}; an invalid {what} "
                    "should raise ValueError"
                )

    _adam("adamw_constructor", AdamW, "cpu", runs, judge)


def check_adamw_state_and_closure(AdamW: Any, *, device: Any = None, seed: int = 0) -> None:
    """``step(closure)`` returns the closure's loss; ``state`` uses torch's keys and values; a
    parameter without a gradient gets no state."""
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    target, start = randn(gen, (4,), F64), randn(gen, (4,), F64)
    lr, steps = rng.choice([1e-2, 3e-2]), rng.randint(3, 6)
    device = device_name(device)
    run = {
        "dtype": "float64", "params": [start.tolist(), [0.0, 0.0, 0.0]], "closure": target.tolist(),
        "kwargs": {"lr": lr, "weight_decay": 0.0}, "steps": [{}] * steps, "state": True,
    }  # fmt: skip # the fields grouped by meaning, not one a line

    def judge(obs: dict) -> None:
        recorded = entries(obs, "runs", 1)
        if not recorded or len(_steps(recorded[0], steps)) < steps:
            raise Short
        closures = entries(recorded[0], "closure", steps)
        b = start.clone().requires_grad_(True)
        reference = torch.optim.AdamW([b], lr=lr, weight_decay=0.0)
        for t in range(steps):
            entry = closures[t]  # an IndexError (malformed) when fewer were recorded
            if field(entry, "calls", int) == 0:
                raise GradingError(
                    "AdamW.step(closure) did not call the closure: call it under "
                    "torch.enable_grad() and use the gradients it computes"
                )
            loss, returned = field(entry, "loss", float), field(entry, "returned")
            if returned.get("kind") != "Tensor" or returned.get("number") != loss:
                raise GradingError(
                    f"AdamW.step(closure) should return the closure's loss ({loss:.6g}), got "
                    f"{text(returned.get('repr'))}"
                )
            reference.zero_grad()
            ((b - target) ** 2).sum().backward()
            reference.step()
        state, frozen = entries(recorded[0], "state", 2)  # dicts, or .get fails: malformed
        items = field(state, "items") if state.get("size") else {}
        if not items:
            raise GradingError(
                "AdamW.state[p] is empty after steps: keep each parameter's state in self.state[p]"
            )
        if not {"step", "exp_avg", "exp_avg_sq"} <= set(items):
            raise GradingError(
                f"AdamW.state[p] has keys {[k[:100] for k in sorted(items)]}; it should use "
                "torch's: 'step', 'exp_avg', 'exp_avg_sq'"
            )
        if number(items["step"], "state['step']") != steps:
            raise GradingError(
                f"after {steps} steps state['step'] should be {steps}, got "
                f"{text(items['step'].get('repr'))}"
            )
        for key in ("exp_avg", "exp_avg_sq"):
            what = f"state[p][{key!r}]"
            value = tensor(items[key], what, (4,), F64, device)
            wrong = mismatch(value, reference.state[b][key])
            if wrong is not None:
                raise GradingError(
                    f"after {steps} steps with a closure, {what} differs from torch.optim.AdamW's: "
                    f"{wrong}"
                )
        if frozen.get("size"):
            raise GradingError("a parameter whose .grad is None got state: skip it in step()")

    _adam("adamw_state_and_closure", AdamW, device, [run], judge)


# -- Functions of plain inputs (schedules, by-hand calculations), observed by `calls`: the judge
# gets each result, and the call that made it. ----------------------------------------------------


def _calls(
    check: str, function: Any, name: str, cases: Sequence[tuple], kind: str, judge_one: Callable
) -> None:
    """Protocol `calls` on ``cases`` (positional and keyword arguments, then what the check
    needs): ``judge_one(result, "name(arguments)", case)`` on each result."""
    calls = [[list(case[0]), dict(case[1])] for case in cases]

    def judge(obs: dict) -> None:
        for result, case in until_stop(entries(obs, "results", len(cases)), cases):
            shown = [repr(a) for a in case[0]] + [f"{k}={v!r}" for k, v in case[1].items()]
            judge_one(result, f"{name}({', '.join(shown)})", case)

    _check(check, "calls", function, {"kind": kind, "calls": calls}, judge, name)


def _numbers(desc: Any, name: str, call: str, keys: Sequence[str] | None, total: Any, tol: tuple):
    """A result's numbers by key: ``{None: number}``, or with ``keys`` a dict's numbers (exactly
    those keys, ``total`` the sum of the others, within ``tol`` = (rtol, atol))."""
    if keys is None:
        return {None: number(desc, f"{name}'s result")}
    shown = text(desc.get("repr"))
    items = desc.get("items") if desc.get("kind") == "dict" else None
    if not isinstance(items, dict) or set(items) != set(keys) or desc.get("size") != len(keys):
        raise GradingError(f"{call} should return a dict with keys {', '.join(keys)}; got {shown}")
    numbers = {k: number(items[k], f"{call}[{k!r}]") for k in keys}
    others = [k for k in keys if k != total]
    if total is not None and disagreement(numbers[total], sum(numbers[k] for k in others), *tol):
        raise GradingError(f"{call}: {total} should be {' + '.join(others)}, got {shown}")
    return numbers


def _wrong(call: str, key: str | None, wrong: str, advice: str = "") -> GradingError:
    at = "" if key is None else f"[{key!r}]"
    return GradingError(f"{call}{at}: {wrong}. {advice}".rstrip())


def check_values(
    function: Any,
    name: str,
    cases: Sequence[tuple[Sequence[Any], dict[str, Any], Any, str]],
    *,
    keys: Sequence[str] | None = None,
    total: str | None = None,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
) -> None:
    """``cases``: (positional args, keyword args, expected value, hint when wrong); an ``int``
    expected is compared exactly. With ``keys`` the function returns a dict of numbers with
    exactly those keys (``total``, when given, the sum of the others), and ``expected`` is a
    dict of the values to compare."""

    def judge_one(result: Any, call: str, case: tuple) -> None:
        got = _numbers(result, name, call, keys, total, (rtol, atol))
        for key, want in (case[2] if keys else {None: case[2]}).items():
            wrong = disagreement(got[key], want, rtol, atol)
            if wrong:
                raise _wrong(call, key, wrong, case[3])

    _calls("values", function, name, cases, kind, judge_one)


def check_against_reference(
    function: Any,
    reference: Callable,
    name: str,
    cases: Sequence[Case],
    *,
    keys: Sequence[str] | None = None,
    kind: str = "course_lib",
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    unit: str = "",
    mistakes: dict[str, Callable] | None = None,
    hints: Callable[..., str] | None = None,
) -> None:
    """``function(*args, **kwargs)`` equals ``reference(...)`` on every case (exactly, where
    the reference gives an ``int``: byte counts); with ``keys``, both return dicts of numbers
    compared key by key. When a value differs: the first of ``mistakes`` (description ->
    function like the reference) that gives the same value is named, or ``hints(key, *args,
    **kwargs)`` says what to look at (``key`` None without ``keys``)."""

    def judge_one(result: Any, call: str, case: tuple) -> None:
        args, kwargs = case
        got = _numbers(result, name, call, keys, None, (rtol, atol))
        want = reference(*args, **kwargs)
        for key in got:
            wrong = disagreement(got[key], want if keys is None else want[key], rtol, atol, unit)
            if wrong is None:
                continue
            for description, mistake in (mistakes or {}).items():
                try:
                    value = mistake(*args, **kwargs)
                    same = disagreement(got[key], value[key] if keys else value, 1e-9, 1e-15)
                except Exception:  # a mistake model that does not apply to these inputs
                    continue
                if same is None:
                    raise _wrong(call, key, wrong, f"Likely mistake: {description}")
            raise _wrong(call, key, wrong, hints(key, *args, **kwargs) if hints else "")

    _calls("against_reference", function, name, cases, kind, judge_one)


def check_predicate(
    function: Any,
    name: str,
    cases: Sequence[Case],
    predicate: Callable[[float], Any],
    message: str,
    *,
    kind: str = "course_lib",
) -> None:
    """``predicate(function(*args, **kwargs))`` holds on every case (a property, without the
    answer): when it does not, ``"name(args) = got: message"``."""

    def judge_one(result: Any, call: str, case: tuple) -> None:
        got = number(result, f"{name}'s result")
        if not predicate(got):
            raise GradingError(f"{call} = {got:.10g}: {message}")

    _calls("predicate", function, name, cases, kind, judge_one)


# -- Plain answers (a number, a type, letters), observed by `value`. ------------------------------


def _value(check: str, answer: Any, name: str, judge_value: Callable[[dict, Any], None]) -> None:
    def judge(obs: dict) -> None:
        judge_value(field(obs, "value"), obs)

    _check(check, "value", answer, {"name": name}, judge, name)


def check_number(
    value: Any,
    name: str,
    expected: float,
    *,
    rtol: float = FLOAT_RTOL,
    atol: float = 0.0,
    message: str | None = None,
) -> None:
    """A number equal to ``expected`` (exactly, where it is an ``int``). ``message``, when
    given, is formatted with ``name``, ``got`` (the answer's repr) and ``expected``."""

    def judge(desc: dict, obs: Any) -> None:
        wrong = disagreement(number(desc, name), expected, rtol, atol)
        if wrong:
            template, shown = message or "{name} = {got}: {wrong}", text(desc.get("repr"))
            raise GradingError(
                template.format(name=name, got=shown, expected=expected, wrong=wrong)
            )

    _value("number", value, name, judge)


def check_type(
    value: Any, name: str, types: type | tuple[type, ...] = float, *, description: str | None = None
) -> None:
    """``isinstance(value, types)``; the message says ``name should be <description>``."""
    types = types if isinstance(types, tuple) else (types,)
    description = description or "a " + " or a ".join(t.__name__ for t in types)

    def judge(desc: dict, obs: Any) -> None:
        mro = texts(field(obs, "mro", list))
        if not any(f"{t.__module__}.{t.__qualname__}" in mro for t in types):
            raise GradingError(f"{name} should be {description}, got {text(desc.get('repr'))}")

    _value("type", value, name, judge)


def _letters(desc: dict, name: str) -> list[tuple[str | None, str]]:
    """(letter, repr) of each item of a choice (one string, or a collection); a non-string
    item's letter is None."""
    if desc.get("kind") == "str":
        items = [desc]
    elif desc.get("kind") in ("list", "tuple", "set", "frozenset"):
        items = entries(desc, "items", 100)
        if field(desc, "size", int) != len(items):
            raise GradingError(
                f"{name} = {text(desc.get('repr'))}: far more letters than there are options"
            )
    else:
        raise GradingError(
            f"{name} should be a letter or a collection of letters, got {text(desc.get('repr'))}"
        )
    out = []
    for x in items:
        letter = text(x["str"], 200).strip().lower() if x.get("kind") == "str" else None
        out.append((letter, text(x.get("repr"), 200)))
    return out


def check_choice(
    value: Any, name: str, *, options: str, count: int | None = None, ordered: bool = False,
    nonempty: bool = False,
) -> None:  # fmt: skip # the options of the format on two lines
    """The answer's format: letters from ``options``; ``count`` of them when given, at least
    one when ``nonempty``; a list or tuple when ``ordered``."""

    def judge(desc: dict, obs: Any) -> None:
        shown, letters = text(desc.get("repr")), _letters(desc, name)
        if ordered and desc.get("kind") not in ("list", "tuple"):
            raise GradingError(f"{name} should be a list in order, first fix first, got {shown}")
        bad = [r for letter, r in letters if letter is None or letter not in options]
        if bad:
            raise GradingError(
                f"{name}: [{', '.join(bad)}] are not among the options {', '.join(options)}"
            )
        if count is not None and len(letters) != count:
            raise GradingError(f"{name} should hold {count} letter(s), got {len(letters)}: {shown}")
        if len({letter for letter, _ in letters}) != len(letters):
            raise GradingError(f"{name} repeats a letter: {shown}")
        if nonempty and not letters:
            raise GradingError(f"{name} is empty: choose every letter that applies")

    _value("choice", value, name, judge)


def check_answer_letters(
    value: Any, name: str, expected: Sequence[str], *, ordered: bool, explanations: dict[str, str]
) -> None:
    """Compare a choice with the key; explain each wrong or missing letter."""

    def judge(desc: dict, obs: Any) -> None:
        got = [r if letter is None else letter for letter, r in _letters(desc, name)]
        want = [x.lower() for x in expected]
        if (got == want) if ordered else (set(got) == set(want) and len(got) == len(set(got))):
            return
        lines = [f"({x}) is not right: {explanations.get(x, '')}" for x in got if x not in want]
        if any(x not in got for x in want):
            lines.append(f"one right answer is missing. {explanations.get('missing', '')}")
        if ordered and set(got) == set(want):
            lines.append(
                "the order is not right: do first what tells you where the NaN comes from."
            )
        raise GradingError(f"{name} = {text(desc.get('repr'))}: " + " ".join(lines))

    _value("answer_letters", value, name, judge)


# -- What several hidden tests share (they run in the grader's process, never in the sandbox). ----


def schedule_cases(seed: int, *, length: bool = False, cooldown: bool = False) -> list[Case]:
    """Calls of a schedule for a hidden test, with ``course_lib.schedules``' keywords: eight
    random schedules (``peak_lr``, ``num_warmup_steps >= 1``; with ``length`` also
    ``num_training_steps`` and ``min_lr``; with ``cooldown`` a ``cooldown_fraction`` whose
    cooldown starts after the warmup), each called at its boundaries and at random steps."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for _ in range(8):
        peak = 10 ** rng.uniform(-5, -2)
        warmup = rng.choice([1, 2, 10, rng.randint(3, 500)])
        kwargs = {"peak_lr": peak, "num_warmup_steps": warmup}
        if length:
            if cooldown:
                total = 100 * rng.randint(2 * (warmup // 100 + 2), 400)
                kwargs["cooldown_fraction"] = rng.choice([0.1, 0.2, 0.25, 0.5])
            else:
                total = warmup + rng.randint(20, 5000)
            kwargs.update(num_training_steps=total, min_lr=rng.choice([0.0, peak / 10, peak / 100]))
        steps = [0, 1, warmup - 1, warmup, warmup + 1]
        steps += [rng.randint(0, 3 * warmup) for _ in range(4)]
        if length:
            steps += [total - 2, total - 1, total, total + rng.randint(1, 1000)]
            steps += [rng.randint(warmup, total) for _ in range(6)]
        cases += [((step,), dict(kwargs)) for step in steps if step >= 0]
    return cases


def warmup_ahead(schedule: Callable[..., float]) -> dict[str, Callable[..., float]]:
    """The mistake "the warmup is one step ahead" of a schedule, as
    :func:`check_against_reference` takes mistakes: the rate of step ``s + 1`` in the warmup."""
    description = (
        "the warmup is one step ahead: the course's convention is lr(s) = peak_lr * s / "
        "num_warmup_steps, so lr(0) = 0 and the peak is reached at s = num_warmup_steps."
    )
    return {description: lambda s, **k: schedule(s + 1 if s < k["num_warmup_steps"] else s, **k)}


#: What ``grading`` exposes: the checks, and the references and inputs hidden tests use.
API: dict[str, Any] = {
    n: f
    for n, f in globals().items()
    if n.startswith("check_") or n in ("torch_effective_steps", "schedule_cases", "warmup_ahead")
}
