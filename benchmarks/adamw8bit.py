"""8-bit AdamW against fp32 AdamW, side by side: step time, state bytes per parameter, first call.

Measured in one process on the same parameters: course_lib's ``AdamW8bit`` (the readable
path and ``fast=True``), torch's ``AdamW(fused=True)`` (fp32 states), and the 8-bit AdamW of
bitsandbytes and of torchao when they are installed (``pip install -e ".[bench]"``; without
them they are skipped with a note). Each round times every optimizer once, in rotating
order; the ratios to torch's fused step are taken within a round and their median reported,
so a load that changes between rounds cancels. The first call (state creation, and for
torchao its ``torch.compile``) is timed apart. State bytes are exact: ``numel *
element_size`` over every tensor in ``optimizer.state``, looking inside tensor subclasses
(torchao's ``OptimState8bit``) at the tensors they hold, each storage once.

    python -m benchmarks.adamw8bit --help
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, describe_machine, loadavg, summarise, timer, write_json
from course_lib.memory import optimizer_state_bytes
from course_lib.optim.adamw8bit import AdamW8bit

REFERENCE = "torch AdamW fused (fp32 states)"
FAST = "course_lib AdamW8bit fast=True"
#: The issue's targets for the fast path, checked on the recorded numbers.
MAX_TIME_OVER_FUSED = 5.0
MAX_STATE_BYTES_PER_PARAMETER = 2.05


def implementations(device: torch.device) -> tuple[dict[str, Callable], dict[str, str]]:
    """The optimizers to measure (name -> factory of params), and notes on those skipped."""
    found: dict[str, Callable] = {
        "course_lib AdamW8bit (readable)": lambda ps: AdamW8bit(ps),
        FAST: lambda ps: AdamW8bit(ps, fast=True),
        REFERENCE: lambda ps: torch.optim.AdamW(ps, fused=True),
    }
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("bitsandbytes") is None:
        skipped["bitsandbytes AdamW8bit"] = "not installed (pip install -e '.[bench]')"
    else:

        def bnb(ps):
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(ps)

        found["bitsandbytes AdamW8bit"] = bnb
    if importlib.util.find_spec("torchao") is None:
        skipped["torchao AdamW8bit"] = "not installed (pip install -e '.[bench]')"
    else:

        def torchao(ps):
            from torchao.optim import AdamW8bit as TorchaoAdamW8bit

            return TorchaoAdamW8bit(ps)

        found["torchao AdamW8bit"] = torchao
    return found, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adamw8bit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (readable path there)")
    parser.add_argument("--params", type=int, default=2**22, help="parameters in all (4.2M)")
    parser.add_argument("--tensors", type=int, default=8, help="equal matrices they form")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    for name in ("params", "tensors", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.params < args.tensors * 4096:
        parser.error("--params must give every tensor at least 4096 elements")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)

    rows = args.params // args.tensors // 1024
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(rows, 1024, generator=gen) for _ in range(args.tensors)]
    grads = [torch.randn(rows, 1024, generator=gen) * 1e-2 for _ in range(args.tensors)]
    numel = sum(w.numel() for w in weights)
    factories, skipped = implementations(device)
    machine = describe_machine(device)
    measure = timer(device)
    optimizers, first_call, failures = {}, {}, {}
    for name, make in factories.items():
        # Each optimizer its own copy of the same weights and gradients.
        params = [w.clone().to(device).requires_grad_() for w in weights]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = make(params)
                first_call[name] = measure(opt.step)  # state, kernels, compilation
        except Exception as error:  # a library that cannot run here is reported, not fatal
            failures[name] = f"{type(error).__name__}: {error}"
            continue
        optimizers[name] = opt
    if REFERENCE not in optimizers:
        raise SystemExit(f"{REFERENCE} failed: {failures.get(REFERENCE)}")
    names = list(optimizers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for r in tqdm(range(args.warmup + args.rounds), disable=args.no_progress, file=sys.stderr):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t = measure(optimizers[name].step)
            if r >= args.warmup:
                samples[name].append(t)

    results = {}
    for name, opt in optimizers.items():
        s = summarise(samples[name])
        s["first_call_s"] = first_call[name]
        s["state_bytes"] = optimizer_state_bytes(opt)
        s["state_bytes_per_parameter"] = s["state_bytes"] / numel
        s["time_over_torch_fused"] = statistics.median(
            a / b for a, b in zip(samples[name], samples[REFERENCE], strict=True)
        )
        results[name] = s
    fast = results.get(FAST)
    others = [n for n in ("bitsandbytes AdamW8bit", "torchao AdamW8bit") if n in results]
    targets = {}
    if fast is not None:
        targets = {
            f"fast_within_{MAX_TIME_OVER_FUSED:g}x_of_torch_fused": fast["time_over_torch_fused"]
            <= MAX_TIME_OVER_FUSED,
            f"fast_state_at_most_{MAX_STATE_BYTES_PER_PARAMETER}_bytes_per_parameter": fast[
                "state_bytes_per_parameter"
            ]
            <= MAX_STATE_BYTES_PER_PARAMETER,
            **{
                f"fast_faster_than_{n.split()[0]}": statistics.median(
                    a / b for a, b in zip(samples[FAST], samples[n], strict=True)
                )
                < 1
                for n in others
            },
        }
    machine["loadavg_at_end"] = loadavg()
    machine["wall_time_s"] = round(time.perf_counter() - started, 1)
    out = {
        "benchmark": "adamw8bit",
        "machine": machine,
        "config": {
            "parameters": numel,
            "tensors": args.tensors,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "reference": REFERENCE,
        },
        "versions": _versions(),
        "implementations": results,
        "skipped": skipped,
        "failures": failures,
        "targets": targets,
    }
    path = args.output or RESULTS / f"adamw8bit_{device.type}.json"
    write_json(out, path)
    print(
        f"{machine.get('gpu', machine['cpu'])} | torch {machine['torch']} | "
        f"{machine['torch_threads']} thread(s) | load {machine['loadavg_at_start']} -> "
        f"{machine['loadavg_at_end']}"
    )
    print(f"{numel / 1e6:.1f}M parameters in {args.tensors} tensors")
    print(f"{'optimizer':<34} {'B/param':>8} {'ms/step':>8} {'x fused':>8} {'1st call s':>10}")
    for name, s in results.items():
        print(
            f"{name:<34} {s['state_bytes_per_parameter']:>8.3f} {s['median_s'] * 1e3:>8.2f} "
            f"{s['time_over_torch_fused']:>8.2f} {s['first_call_s']:>10.2f}"
        )
    for name, why in {**skipped, **failures}.items():
        print(f"{name}: skipped, {why}")
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    print(f"wrote {path}")
    return 0


def _versions() -> dict[str, str]:
    versions = {}
    for module in ("bitsandbytes", "torchao"):
        if importlib.util.find_spec(module) is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[module] = version(module)
            except PackageNotFoundError:
                versions[module] = "unknown"
    return versions


if __name__ == "__main__":
    sys.exit(main())
