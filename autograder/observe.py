"""The observation half of the checks, the only grading code in the sandbox (with
:mod:`.common`, :mod:`.delegation`, :mod:`.grading`): run the student's answer on inputs
given as data and record what it did as plain JSON, under one of four protocols (``value``,
``calls``, ``update``, ``optimizer``: the table in ``autograder/README.md``). It computes no
reference, judges nothing, and never raises for what the answer does: an exception,
delegation or an unusable result ends the observation under ``"stop"``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from autograder.common import MAX_ITEMS, captured, describe_exception, shorten
from autograder.delegation import call_watched, delegation_reasons

MAX_ELEMENTS = 1 << 16  # elements of a tensor recorded whole
_KINDS = (bool, int, float, str, list, tuple, set, frozenset, dict, Tensor)


def describe(value: Any, depth: int = 0) -> dict[str, Any]:
    """A value as the judge reads it: ``type``, ``kind`` (the builtin it is an instance of),
    ``repr``; ``number`` (an ``int`` kept exact: byte counts are judged exactly); ``str``;
    a tensor's ``shape``, ``dtype``, ``device`` and ``data``; a container's ``size`` and
    ``items`` (a dict's string keys only), two levels deep."""
    try:
        kind = next((k.__name__ for k in _KINDS if isinstance(value, k)), "other")
        cls = type(value)
        out: dict[str, Any] = {"type": f"{cls.__module__}.{cls.__qualname__}", "kind": kind}
        out["repr"] = shorten(value)
        if isinstance(value, Tensor):
            out.update(shape=list(value.shape), dtype=str(value.dtype), device=str(value.device))
            if value.numel() <= MAX_ELEMENTS:
                out["data"] = value.detach().cpu().tolist()
        elif isinstance(value, str):
            out["str"] = value[:200]
        elif isinstance(value, (dict, list, tuple, set, frozenset)) and depth < 2:
            out["size"] = len(value)
            if isinstance(value, dict):
                keys = [k for k in value if isinstance(k, str)]
                out["items"] = {k: describe(value[k], depth + 1) for k in keys[:MAX_ITEMS]}
            else:
                out["items"] = [describe(x, depth + 1) for x in list(value)[:MAX_ITEMS]]
        number = _number(value)
        if number is not None:
            out["number"] = number
        return out
    except Exception as error:  # a student's object that misbehaves when looked at
        return {"type": "?", "kind": "other", "repr": f"<{describe_exception(error)}>"}


def _number(value: Any) -> int | float | None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        return None
    number = float(value)
    try:
        integer = int(operator.index(value))
        if float(integer) == number:  # the same number, of a bounded size
            return integer
    except Exception:
        pass
    return number


class _Stop(Exception):
    """Ends an observation early."""


class Recorder:
    """The observation being built; :meth:`stop` records why it ends and unwinds."""

    def __init__(self, kind: str | None) -> None:
        self.data: dict[str, Any] = {}
        self.kind = kind

    def stop(self, kind: str, **info: Any) -> None:
        self.data["stop"] = {"kind": kind, **info}
        raise _Stop

    def call(self, function: Callable, *args: Any, call: str, errors: Any = None, **kwargs: Any):
        """Call the answer under the delegation watch; stop on delegation, and on an
        exception unless ``errors`` (a dict) is given to record it in."""
        result, exception, hits = call_watched(function, *args, kind=self.kind, **kwargs)
        if hits:
            self.stop("refused", call=call, hits=[shorten(h, how=str) for h in hits])
        if exception is not None:
            error = describe_exception(exception)
            if errors is None:
                self.stop("raised", call=call, error=error)
            value_error = isinstance(exception, ValueError)
            errors["error"] = {"call": call, "text": error, "value_error": value_error}
        return result


def _tensor(values: Any, dtype: str, device: torch.device, **kwargs: Any) -> Tensor:
    return torch.tensor(values, dtype=getattr(torch, dtype), device=device, **kwargs)


def observe_value(record: Recorder, value: Any, inputs: dict[str, Any]) -> None:
    record.data["value"] = describe(value)
    record.data["mro"] = [f"{c.__module__}.{c.__qualname__}" for c in type(value).__mro__][:20]


def observe_calls(record: Recorder, function: Any, inputs: dict[str, Any]) -> None:
    record.data["results"] = results = []
    for args, kwargs in inputs["calls"]:
        results.append(describe(record.call(function, *args, call="call", **kwargs)))


def observe_update(record: Recorder, update: Any, inputs: dict[str, Any]) -> None:
    device, keep = torch.device(inputs["device"]), 3 if inputs["moments"] else 1
    record.data["runs"] = []
    for run in inputs["runs"]:
        record.data["runs"].append(steps := [])
        p = _tensor(run["start"], run["dtype"], device)
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for t, grad in enumerate(run["grads"], start=1):
            g = _tensor(grad, run["dtype"], device)
            args = (p.clone(), g, m.clone(), v.clone(), t)
            result = record.call(update, *args, call="call", **run["hyper"])
            like = [
                isinstance(x, Tensor) and (x.shape, x.dtype, x.device) == (p.shape, p.dtype, device)
                for x in (result if isinstance(result, (tuple, list)) else ())
            ]
            if len(like) != 3 or not all(like):
                record.stop("bad_result", result=describe(result))
            p, m, v = result
            steps.append([x.detach().cpu().tolist() for x in (p, m, v)[:keep]])


def observe_optimizer(record: Recorder, cls: Any, inputs: dict[str, Any]) -> None:
    ok = inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
    record.data["class"] = {"ok": bool(ok), "repr": shorten(cls)}
    if not ok:
        raise _Stop
    device = torch.device(inputs["device"])
    record.data["runs"] = []
    for spec in inputs["runs"]:
        run: dict[str, Any] = {"params": []}
        params = [_tensor(x, spec["dtype"], device, requires_grad=True) for x in spec["params"]]
        groups = [
            {**_tuples(g), "params": [params[i] for i in g["params"]]}
            for g in spec.get("groups", [])
        ]
        opt = record.call(cls, groups or params, call="init", errors=run, **_tuples(spec["kwargs"]))
        record.data["runs"].append(run)  # not when the constructor delegated: the stop says it
        if "error" in run:
            continue
        if not isinstance(opt, torch.optim.Optimizer):
            record.stop("not_optimizer", type=type(opt).__name__)
        if spec.get("defaults"):
            group = opt.param_groups[0]
            run["defaults"] = describe({k: v for k, v in group.items() if k != "params"})
        for step in spec["steps"]:
            for group in opt.param_groups:
                if "lr" in step:
                    group["lr"] = step["lr"]
                if "lr_factor" in step:
                    group["lr"] = group["lr"] * step["lr_factor"]
            for p, grad in zip(params, step.get("grads", [None] * len(params)), strict=True):
                p.grad = None if grad is None else _tensor(grad, spec["dtype"], device)
            closure, losses = None, []
            if "closure" in spec:
                closure = _closure(
                    opt, params[0], _tensor(spec["closure"], spec["dtype"], device), losses
                )
            returned = record.call(opt.step, closure, call="step")
            run["params"].append([p.detach().cpu().tolist() for p in params])
            if closure is not None:
                loss = {"calls": len(losses), "loss": losses[-1] if losses else None}
                run.setdefault("closure", []).append({**loss, "returned": describe(returned)})
        if spec.get("state"):
            run["state"] = [describe(dict(opt.state.get(p) or {})) for p in params]


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """Options as a test cell wrote them: ``betas`` a tuple (JSON made it a list)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _closure(opt: Any, p: Tensor, target: Tensor, losses: list[float]) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = ((p - target) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
        return loss

    return closure


PROTOCOLS = {
    "value": observe_value,
    "calls": observe_calls,
    "update": observe_update,
    "optimizer": observe_optimizer,
}


def observe(protocol: str, answer: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run ``protocol`` on ``answer`` and ``inputs``: plain JSON data. Warnings and stderr
    output while it runs are recorded under ``"notes"``."""
    protocol_run, record = PROTOCOLS[protocol], Recorder(inputs.get("kind"))
    with captured() as notes:
        try:
            if protocol != "value":  # before it runs: its MRO and source
                record.data["delegation"] = delegation_reasons(answer, record.kind)
            protocol_run(record, answer, inputs)
        except _Stop:
            pass
        except Exception as error:  # the answer's objects misbehaved while looked at
            record.data["stop"] = {"kind": "crash", "error": describe_exception(error)}
    record.data["notes"] = [shorten(note, 300, str) for note in dict.fromkeys(notes)][:5]
    return record.data
