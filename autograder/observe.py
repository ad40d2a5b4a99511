"""The observation halves of the checks: run the student's answer, record what it did.

:func:`observe` runs in the student's process (the grader's sandbox, or the notebook's own
kernel in inline mode). From a check's plain inputs (seeds, steps, device, the calls to
make) it generates the check's inputs deterministically, calls the answer on them the same
way whether its results are right or not, and returns plain JSON data: the answer's outputs
after every step, the exception that stopped it, the types and shapes of its results, the
delegation it was seen doing. It computes no reference and judges nothing: the judge
(:mod:`course_lib.grading.judge`, in the grader's process) regenerates the same inputs,
computes the references and compares.

This module may import only the standard library, torch, :mod:`.common` and
:mod:`.delegation`: in the sandbox it is all there is of ``course_lib`` (with those two), and
``torch.optim.Adam``/``AdamW`` are stubs that raise.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from autograder.common import (
    DTYPES_BY_NAME,
    MAX_ITEMS,
    captured,
    describe_exception,
    describe_number,
    describe_value,
    encode_tensor,
    short_repr,
    short_str,
)
from autograder.delegation import call_watched, delegation_reasons

# --------------------------------------------------------------------------------------
# Deterministic inputs: the same in the sandbox and in the judge.
# --------------------------------------------------------------------------------------


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
    grads: list[list[float]] = field(default_factory=list)
    start: list[float] = field(default_factory=lambda: [0.5, -1.5, 0.02])

    @classmethod
    def random(cls, rng: random.Random, **overrides: Any) -> Probe:
        probe = cls(
            lr=rng.choice([0.05, 0.1, 0.2]),
            beta1=rng.choice([0.7, 0.8, 0.85]),
            beta2=rng.choice([0.9, 0.95, 0.97]),
            eps=rng.choice([1e-3, 3e-3]),
            start=[rng.uniform(0.2, 1.0), -rng.uniform(0.5, 2.0), rng.uniform(-0.05, 0.05)],
        )
        for key, value in overrides.items():
            setattr(probe, key, value)
        return probe

    def gradient(self, t: int) -> list[float]:
        """The gradient fed at update number ``t`` (1-based): mixed signs and sizes."""
        if self.grads:
            return self.grads[(t - 1) % len(self.grads)]
        return [0.3 + 0.1 * t, (-1.0) ** t * 2.0, 0.002 * t]

    def lr_at(self, t: int) -> float:
        if self.lr_change_at is not None and t - 1 >= self.lr_change_at:
            return self.lr * 0.5
        return self.lr

    def hyper(self, t: int) -> dict[str, float]:
        """``adam_update``'s keyword arguments at update number ``t``."""
        return {
            "lr": self.lr_at(t),
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def settings(self) -> str:
        text = (
            f"lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
            f"weight_decay={self.weight_decay}, start={[round(x, 4) for x in self.start]}"
        )
        if self.lr_change_at is not None:
            text += f", lr halved before update {self.lr_change_at + 1}"
        return text


def adam_probes(seed: int | None) -> list[Probe]:
    """``check_adam_first_steps``'s problems: without, then with weight decay."""
    rng = random.Random(seed)
    plain = Probe() if seed is None else Probe.random(rng)
    decay = Probe(weight_decay=0.1) if seed is None else Probe.random(rng, weight_decay=0.1)
    return [plain, decay]


def adamw_probes(seed: int | None) -> list[Probe]:
    """``check_adamw_first_steps``'s problems: no decay, then decay and an lr change."""
    rng = random.Random(seed)
    return [
        Probe(weight_decay=0.0, steps=5)
        if seed is None
        else Probe.random(rng, weight_decay=0.0, steps=5),
        Probe(weight_decay=0.2, steps=8, lr_change_at=5)
        if seed is None
        else Probe.random(
            rng, weight_decay=rng.choice([0.1, 0.2, 0.3]), steps=8, lr_change_at=rng.randint(3, 6)
        ),
    ]


def random_shape(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randint(1, 5) for _ in range(rng.randint(0, 3)))


def random_hyper(rng: random.Random) -> dict[str, float]:
    return {
        "lr": 10 ** rng.uniform(-4, -1),
        "beta1": rng.choice([0.0, 0.5, 0.9, rng.uniform(0.0, 0.99)]),
        "beta2": rng.choice([0.95, 0.999, rng.uniform(0.9, 0.9999)]),
        "eps": rng.choice([1e-8, 1e-6, 1e-3]),
        "weight_decay": rng.choice([0.0, 1e-4, 0.05, 0.1]),
    }


def dtype_of(name: Any) -> torch.dtype:
    """``torch.float64`` from ``"float64"`` (or from the dtype itself)."""
    if isinstance(name, torch.dtype):
        return name
    if not isinstance(name, str) or name.removeprefix("torch.") not in DTYPES_BY_NAME:
        raise ValueError(f"No tolerance for {name}: the checks use float32 and float64")
    return DTYPES_BY_NAME[name.removeprefix("torch.")]


@dataclass
class AdamCase:
    """One case of ``check_adam_against_torch``."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    hyper: dict[str, float]
    scale: float
    start: Tensor
    grads: list[Tensor]


def adam_torch_cases(
    seed: int, cases: int, steps: int, dtypes: Sequence[Any], device: torch.device
) -> Iterator[AdamCase]:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(cases):
        dtype = dtype_of(dtypes[case % len(dtypes)])
        shape = random_shape(rng)
        hyper = random_hyper(rng)
        scale = 10 ** rng.choice([-2, -1, 0, 1])
        start = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
        grads = [
            (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
            for _ in range(steps)
        ]
        yield AdamCase(dtype, shape, hyper, scale, start, grads)


@dataclass
class AdamWCase:
    """One case of ``check_adamw_against_torch``: parameters, groups, the run's events."""

    dtype: torch.dtype
    shapes: list[tuple[int, ...]]
    n_groups: int
    group_hypers: list[dict[str, Any]]
    common: dict[str, float]
    starts: list[Tensor]
    change_at: int
    factor: float
    none_every: int
    grads: list[list[Tensor | None]]  # [step][parameter]

    def groups(self, params: list[Tensor]) -> list[dict[str, Any]]:
        n = self.n_groups
        return [{"params": params[i::n], **self.group_hypers[i]} for i in range(n)]


def adamw_torch_cases(
    seed: int, cases: int, steps: int, dtypes: Sequence[Any], device: torch.device
) -> Iterator[AdamWCase]:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    for case in range(cases):
        dtype = dtype_of(dtypes[case % len(dtypes)])
        shapes = [random_shape(rng) for _ in range(rng.randint(2, 5))]
        n_groups = rng.randint(1, min(3, len(shapes)))
        group_hypers = []
        for _ in range(n_groups):
            h = random_hyper(rng)
            group_hypers.append(
                {
                    "lr": h["lr"],
                    "betas": (h["beta1"], h["beta2"]),
                    "eps": h["eps"],
                    "weight_decay": h["weight_decay"],
                }
            )
        if n_groups > 1:
            del group_hypers[-1]["weight_decay"]  # this group takes the constructor's default
        common = {"lr": 10 ** rng.uniform(-4, -2), "weight_decay": rng.choice([0.01, 0.1])}
        del group_hypers[0]["lr"]  # and this one the constructor's lr
        starts = [
            torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes
        ]
        change_at = rng.randint(steps // 3, 2 * steps // 3)
        factor = rng.choice([0.1, 0.3, 2.0])
        none_every = rng.choice([5, 7, 11])
        grads: list[list[Tensor | None]] = []
        for step in range(steps):
            row: list[Tensor | None] = []
            for i, shape in enumerate(shapes):
                if (step + i) % none_every == 0:
                    row.append(None)
                    continue
                scale = 10.0 ** (i % 3 - 1)
                row.append(
                    (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(
                        device, dtype
                    )
                )
            grads.append(row)
        yield AdamWCase(
            dtype, shapes, n_groups, group_hypers, common, starts, change_at, factor,
            none_every, grads,
        )  # fmt: skip # the arguments grouped by meaning, not one a line


def constructor_cases(seed: int | None) -> list[tuple[dict[str, Any], str]]:
    """Out-of-range hyperparameters for ``check_adamw_constructor``: (kwargs, what).

    ``seed=None`` gives the first value of each list, in order: the sandbox and the judge
    must make the same cases.
    """
    rng = random.Random(seed)

    def pick(values: list[float]) -> float:
        return values[0] if seed is None else rng.choice(values)

    bad = [
        ({"lr": -pick([1e-3, 0.5, 2.0])}, "lr"),
        ({"eps": -pick([1e-8, 1e-3])}, "eps"),
        ({"betas": (pick([1.0, 1.5, -0.1]), 0.999)}, "betas[0]"),
        ({"betas": (0.9, pick([1.0, 1.2, -0.5]))}, "betas[1]"),
        ({"weight_decay": -pick([1e-2, 0.3])}, "weight_decay"),
    ]
    if seed is not None:
        rng.shuffle(bad)
    return bad


@dataclass
class ClosureProblem:
    """``check_adamw_state_and_closure``'s problem: fit ``start`` to ``target``."""

    target: Tensor
    start: Tensor
    lr: float
    steps: int


def closure_problem(seed: int, device: torch.device) -> ClosureProblem:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    target = torch.randn(4, generator=gen, dtype=torch.float64).to(device)
    start = torch.randn(4, generator=gen, dtype=torch.float64).to(device)
    lr = rng.choice([1e-2, 3e-2])
    steps = rng.randint(3, 6)
    return ClosureProblem(target, start, lr, steps)


# --------------------------------------------------------------------------------------
# Recording.
# --------------------------------------------------------------------------------------


class _Stop(Exception):
    """Ends an observation early (the answer raised, delegated, or returned the unusable)."""


class Recorder:
    """The observation being built; :meth:`stop` records why it ends and unwinds."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def stop(self, kind: str, **info: Any) -> None:
        self.data["stop"] = {"kind": kind, **info}
        raise _Stop

    def end(self) -> None:
        """End here without a reason: what was recorded already fails the check."""
        raise _Stop

    def call(self, function: Callable[..., Any], *args: Any, call: str, kind: str, **kwargs: Any):
        """Call the answer under the delegation watch; stop on an exception or delegation."""
        outcome = call_watched(function, *args, kind=kind, **kwargs)
        if outcome.hits:
            self.stop("refused", call=call, hits=[short_str(h) for h in outcome.hits[:MAX_ITEMS]])
        if outcome.error is not None:
            self.stop("raised", call=call, error=outcome.error)
        return outcome.result


def _stack(values: list[Tensor], shape: Sequence[int], dtype: torch.dtype) -> dict[str, Any]:
    if not values:
        return encode_tensor(torch.empty((0, *shape), dtype=dtype))
    return encode_tensor(torch.stack([v.detach().to("cpu") for v in values]))


def _is_like(value: Any, like: Tensor) -> bool:
    return (
        isinstance(value, Tensor)
        and value.shape == like.shape
        and value.dtype == like.dtype
        and value.device == like.device
    )


def _class_info(record: Recorder, cls: Any) -> None:
    """Is it a ``torch.optim.Optimizer`` class, and does it delegate (MRO, source)?"""
    ok = inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
    record.data["class"] = {"ok": bool(ok), "repr": short_repr(cls)}
    if not ok:
        record.end()
    record.data["delegation"] = delegation_reasons(cls, "optimizer")


def _new_optimizer(record: Recorder, cls: type, groups: Any, **kwargs: Any) -> Any:
    opt = record.call(cls, groups, call="init", kind="optimizer", **kwargs)
    if not isinstance(opt, torch.optim.Optimizer):
        record.stop("not_optimizer", type=type(opt).__name__)
    return opt


# --------------------------------------------------------------------------------------
# Assignment `adam`.
# --------------------------------------------------------------------------------------


def _update(
    record: Recorder,
    update: Callable,
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    t: int,
    hyper: dict[str, float],
) -> tuple[Tensor, Tensor, Tensor]:
    result = record.call(
        update, p.clone(), g.clone(), m.clone(), v.clone(), t, call="call", kind="optimizer",
        **hyper,
    )  # fmt: skip # the arguments grouped by meaning, not one a line
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        record.stop(
            "bad_result",
            type=type(result).__name__,
            length=len(result) if isinstance(result, (tuple, list)) else None,
        )
    items = list(result)
    if not all(_is_like(x, p) for x in items):
        record.stop(
            "bad_result",
            type=type(result).__name__,
            length=3,
            items=[describe_value(x) for x in items],
        )
    return items[0], items[1], items[2]


def observe_adam_first_steps(record: Recorder, update: Any, inputs: dict[str, Any]) -> None:
    device = torch.device(inputs["device"])
    probes = adam_probes(inputs["seed"])
    record.data["delegation"] = delegation_reasons(update, "optimizer")
    record.data["probes"] = []
    for probe in probes:
        steps: list[dict[str, Any]] = []
        record.data["probes"].append(steps)
        p = torch.tensor(probe.start, dtype=torch.float64, device=device)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for t in range(1, probe.steps + 1):
            g = torch.tensor(probe.gradient(t), dtype=torch.float64, device=device)
            p, m, v = _update(record, update, p, g, m, v, t, probe.hyper(t))
            steps.append({"p": encode_tensor(p), "m": encode_tensor(m), "v": encode_tensor(v)})


def observe_adam_against_torch(record: Recorder, update: Any, inputs: dict[str, Any]) -> None:
    device = torch.device(inputs["device"])
    cases = adam_torch_cases(
        inputs["seed"], inputs["cases"], inputs["steps"], inputs["dtypes"], device
    )
    record.data["delegation"] = delegation_reasons(update, "optimizer")
    record.data["cases"] = []
    for case in cases:
        params: list[Tensor] = []
        entry: dict[str, Any] = {}
        record.data["cases"].append(entry)
        p, m, v = case.start.clone(), torch.zeros_like(case.start), torch.zeros_like(case.start)
        try:
            for t, g in enumerate(case.grads, start=1):
                p, m, v = _update(record, update, p, g, m, v, t, case.hyper)
                params.append(p.detach().clone())
        finally:
            entry["params"] = _stack(params, case.shape, case.dtype)


def observe_effective_steps(record: Recorder, function: Any, inputs: dict[str, Any]) -> None:
    sequences = [[float(g) for g in grads] for grads in inputs["sequences"]]
    beta1, beta2 = inputs["betas"]
    record.data["delegation"] = delegation_reasons(function, "optimizer")
    results: list[dict[str, Any]] = []
    record.data["results"] = results
    for grads in sequences:
        got = record.call(
            function, list(grads), call="call", kind="optimizer",
            lr=inputs["lr"], beta1=beta1, beta2=beta2, eps=inputs["eps"],
        )  # fmt: skip # the arguments grouped by meaning, not one a line
        try:
            values = torch.as_tensor(got, dtype=torch.float64).flatten().cpu()
        except (TypeError, ValueError, RuntimeError):
            record.stop("bad_result", type=type(got).__name__)
        count = values.numel()
        results.append({"count": count, "values": values.tolist() if count == len(grads) else None})


# --------------------------------------------------------------------------------------
# Assignment `adamw`.
# --------------------------------------------------------------------------------------


def observe_adamw_constructor(record: Recorder, cls: Any, inputs: dict[str, Any]) -> None:
    cases = constructor_cases(inputs["seed"])
    _class_info(record, cls)
    p = torch.zeros(2, requires_grad=True)
    opt = _new_optimizer(record, cls, [p])
    group = opt.param_groups[0]
    defaults: dict[str, Any] = {}
    record.data["defaults"] = defaults
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key not in group:
            defaults[key] = {"present": False}
            continue
        got = tuple(group[key]) if key == "betas" else group[key]
        defaults[key] = {"present": True, "value": _plain_number(got), "repr": short_repr(got)}
    # One step on a small parameter, so that an AdamW whose step() delegates is refused by
    # this test too.
    q = torch.zeros(2, requires_grad=True)
    q.grad = torch.ones(2)
    record.call(_new_optimizer(record, cls, [q]).step, None, call="step", kind="optimizer")
    invalid: list[dict[str, Any]] = []
    record.data["invalid"] = invalid
    for kwargs, _what in cases:
        q = torch.zeros(2, requires_grad=True)
        outcome = call_watched(cls, [q], kind="optimizer", **kwargs)
        entry: dict[str, Any] = {"hits": [short_str(h) for h in outcome.hits[:MAX_ITEMS]]}
        if outcome.exception is None:
            entry["outcome"] = "accepted"
        elif isinstance(outcome.exception, ValueError):
            entry["outcome"] = "value_error"
        else:
            entry["outcome"] = "other"
            entry["error"] = outcome.error
        invalid.append(entry)


def _plain_number(value: Any) -> Any:
    """A number, or a tuple of numbers, as plain data; None for anything else."""
    if isinstance(value, tuple):
        items = [_plain_number(x) for x in value[:MAX_ITEMS]]
        return None if any(x is None for x in items) else items
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    return None


def observe_adamw_first_steps(record: Recorder, cls: Any, inputs: dict[str, Any]) -> None:
    device = torch.device(inputs["device"])
    probes = adamw_probes(inputs["seed"])
    _class_info(record, cls)
    record.data["probes"] = []
    for probe in probes:
        entry: dict[str, Any] = {}
        record.data["probes"].append(entry)
        params: list[Tensor] = []
        try:
            p = torch.tensor(probe.start, dtype=torch.float64, device=device, requires_grad=True)
            opt = _new_optimizer(
                record, cls, [p], lr=probe.lr, betas=(probe.beta1, probe.beta2), eps=probe.eps,
                weight_decay=probe.weight_decay,
            )  # fmt: skip # the arguments grouped by meaning, not one a line
            for t in range(1, probe.steps + 1):
                for group in opt.param_groups:
                    group["lr"] = probe.lr_at(t)
                p.grad = torch.tensor(probe.gradient(t), dtype=torch.float64, device=device)
                record.call(opt.step, None, call="step", kind="optimizer")
                params.append(p.detach().clone())
        finally:
            entry["params"] = _stack(params, (len(probe.start),), torch.float64)


def observe_adamw_against_torch(record: Recorder, cls: Any, inputs: dict[str, Any]) -> None:
    device = torch.device(inputs["device"])
    cases = adamw_torch_cases(
        inputs["seed"], inputs["cases"], inputs["steps"], inputs["dtypes"], device
    )
    _class_info(record, cls)
    record.data["cases"] = []
    for case in cases:
        entry: dict[str, Any] = {}
        record.data["cases"].append(entry)
        history: list[list[Tensor]] = [[] for _ in case.shapes]
        try:
            ours = [s.clone().requires_grad_(True) for s in case.starts]
            opt = _new_optimizer(record, cls, case.groups(ours), **case.common)
            for step, row in enumerate(case.grads):
                if step == case.change_at:
                    for group in opt.param_groups:
                        group["lr"] = group["lr"] * case.factor
                for a, g in zip(ours, row, strict=True):
                    a.grad = None if g is None else g.clone()
                record.call(opt.step, None, call="step", kind="optimizer")
                for i, a in enumerate(ours):
                    history[i].append(a.detach().clone())
        finally:
            entry["params"] = [
                _stack(values, shape, case.dtype)
                for values, shape in zip(history, case.shapes, strict=True)
            ]


def observe_adamw_state_and_closure(record: Recorder, cls: Any, inputs: dict[str, Any]) -> None:
    device = torch.device(inputs["device"])
    problem = closure_problem(inputs["seed"], device)
    _class_info(record, cls)
    a = problem.start.clone().requires_grad_(True)
    frozen = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    opt = _new_optimizer(record, cls, [a, frozen], lr=problem.lr, weight_decay=0.0)
    steps: list[dict[str, Any]] = []
    record.data["steps"] = steps
    target = problem.target
    for _t in range(problem.steps):
        losses: list[Tensor] = []

        def closure(p: Tensor = a, losses: list = losses) -> Tensor:
            opt.zero_grad()
            loss = ((p - target) ** 2).sum()
            loss.backward()
            losses.append(loss)
            return loss

        loss = record.call(opt.step, closure, call="step", kind="optimizer")
        steps.append(
            {
                "calls": len(losses),
                "closure_loss": losses[-1].item() if losses else None,
                "returned_tensor": isinstance(loss, Tensor),
                "returned": describe_number(loss) if isinstance(loss, Tensor) else None,
                "repr": short_repr(loss),
            }
        )
    state = opt.state.get(a)
    described: dict[str, Any] = {"present": bool(state)}
    record.data["state"] = described
    if state:
        keys = list(state)
        described["keys"] = [short_str(k, 100) for k in keys[:MAX_ITEMS]]
        if "step" in state:
            described["step"] = describe_number(state["step"])
            described["step_repr"] = short_repr(state["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                value = state[key]
                described[key] = describe_value(value)
                if _is_like(value, a.detach()):
                    described[key]["data"] = encode_tensor(value)
    record.data["frozen_state"] = bool(opt.state.get(frozen))


# --------------------------------------------------------------------------------------
# Functions of plain inputs (schedules, by-hand calculations) and plain values.
# --------------------------------------------------------------------------------------


def _calls(inputs: dict[str, Any]) -> list[tuple[list[Any], dict[str, Any]]]:
    calls = []
    for args, kwargs in inputs["calls"]:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("a call is [positional arguments, keyword arguments]")
        calls.append((args, kwargs))
    return calls


def observe_calls(record: Recorder, function: Any, inputs: dict[str, Any]) -> None:
    """``function(*args, **kwargs)`` for every call, each result as a number."""
    calls, kind = _calls(inputs), inputs["kind"]
    record.data["delegation"] = delegation_reasons(function, kind)
    results: list[dict[str, Any]] = []
    record.data["results"] = results
    for args, kwargs in calls:
        got = record.call(function, *args, call="call", kind=kind, **kwargs)
        results.append(describe_number(got))


def observe_dict_calls(record: Recorder, function: Any, inputs: dict[str, Any]) -> None:
    """``function(*args, **kwargs)`` for every call, each result as a dict of numbers."""
    calls, kind, keys = _calls(inputs), inputs["kind"], list(inputs["keys"])
    record.data["delegation"] = delegation_reasons(function, kind)
    results: list[dict[str, Any]] = []
    record.data["results"] = results
    for args, kwargs in calls:
        got = record.call(function, *args, call="call", kind=kind, **kwargs)
        entry: dict[str, Any] = {"is_dict": isinstance(got, dict), "repr": short_repr(got)}
        if isinstance(got, dict):
            names = list(got)
            entry["keys"] = [k for k in names if isinstance(k, str)][:MAX_ITEMS]
            entry["other_keys"] = sum(1 for k in names if not isinstance(k, str))
            entry["values"] = {k: describe_number(got[k]) for k in keys if k in got}
        results.append(entry)


_CONTAINERS = (str, list, tuple, set, frozenset)


def observe_value(record: Recorder, value: Any, inputs: dict[str, Any]) -> None:
    """A plain answer (a number, a letter, a set of letters): its type, value and items."""
    described: dict[str, Any] = {
        "type": type(value).__name__,
        "mro": [f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__][:MAX_ITEMS],
        "repr": short_repr(value),
        "number": describe_number(value),
        "container": next((c.__name__ for c in _CONTAINERS if isinstance(value, c)), None),
    }
    record.data["value"] = described
    if described["container"] is not None:
        items = [value] if isinstance(value, str) else list(value)
        described["size"] = len(items)
        described["items"] = [
            {"is_str": isinstance(x, str), "str": short_str(x, 200), "repr": short_repr(x, 200)}
            for x in items[:MAX_ITEMS]
        ]


def _observers() -> dict[str, Callable[[Recorder, Any, dict[str, Any]], None]]:
    """``observe_<name>`` functions of this module, by name: what a declaration names."""
    return {
        name.removeprefix("observe_"): function
        for name, function in globals().items()
        if name.startswith("observe_") and callable(function)
    }


def observe(observer: str, answer: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run the observer ``observer`` on ``answer`` and ``inputs``; plain JSON data.

    Never raises for what the answer does (an exception, a wrong type, delegation): it is
    recorded under ``"stop"``. Warnings and stderr output while it runs are recorded under
    ``"notes"``. Raises ``ValueError`` for an unknown observer.
    """
    observers = _observers()
    if observer not in observers:
        raise ValueError(f"Unknown observer {observer!r}: expected one of {', '.join(observers)}")
    observer = observers[observer]
    record = Recorder()
    with captured() as notes:
        try:
            observer(record, answer, inputs)
        except _Stop:
            pass
        except Exception as error:  # the answer's objects misbehaved while looked at
            record.data["stop"] = {"kind": "crash", "error": describe_exception(error)}
    record.data["notes"] = [short_str(note, 300) for note in dict.fromkeys(notes)][:5]
    return record.data
