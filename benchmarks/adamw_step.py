"""Time one AdamW step: course_lib's paths against torch.optim.AdamW's, side by side.

Two sets of tensors: a *large* set (about 33M float32 parameters on a CPU, 1B on a GPU, in a
few big matrices) where memory bandwidth decides, and a *small* set (about 300 tensors of
1k to 64k elements) where per-call overhead decides. Six implementations update the same
parameters with the same gradients, each with its own optimizer state:

- ``course_lib loop``: :func:`course_lib.optim.adam_step` per tensor (``foreach=False``)
- ``course_lib multi-tensor``: :func:`course_lib.optim.adam_multi_tensor` (``foreach=True``)
- ``course_lib fused (compiled)``: :class:`course_lib.optim.fast.FusedAdamW`
- ``torch for-loop``, ``torch foreach``, ``torch fused``: ``torch.optim.AdamW`` with
  ``foreach=False``, ``foreach=True`` and ``fused=True``

Every round times each implementation once (in a rotating order, so that load from other
processes falls on all of them alike) together with a same-size ``copy_``; the report gives
medians over rounds after warm-up, ratios from the same rounds, and the effective bandwidth
``28 bytes x parameters / time`` next to the copy's ``8 bytes x elements / time``.

    python -m benchmarks.adamw_step --help
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, describe_machine, loadavg, summarise, timer, write_json
from course_lib.memory import adamw_step_traffic
from course_lib.optim import AdamW
from course_lib.optim.fast import FusedAdamW

COURSE = ("course_lib loop", "course_lib multi-tensor", "course_lib fused (compiled)")
TORCH = ("torch for-loop", "torch foreach", "torch fused")


def make_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    kwargs = {"lr": 1e-4, "weight_decay": 0.01}
    return {
        "course_lib loop": lambda: AdamW(params, foreach=False, **kwargs),
        "course_lib multi-tensor": lambda: AdamW(params, foreach=True, **kwargs),
        "course_lib fused (compiled)": lambda: FusedAdamW(params, **kwargs),
        "torch for-loop": lambda: torch.optim.AdamW(params, foreach=False, **kwargs),
        "torch foreach": lambda: torch.optim.AdamW(params, foreach=True, **kwargs),
        "torch fused": lambda: torch.optim.AdamW(params, fused=True, **kwargs),
    }[name]()


def tensor_shapes(kind: str, total: int, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Shapes of the large set (``count`` equal matrices) or of the small set."""
    if kind == "large":
        per = max(1, total // count)
        cols = 1024 if per >= 1024 else per
        return [(per // cols, cols)] * count
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.logspace(10, 16, count, base=2.0)[torch.randperm(count, generator=gen)]
    return [(int(s),) for s in sizes]


def bench_set(
    kind: str,
    shapes: list[tuple[int, ...]],
    device: torch.device,
    impls: list[str],
    rounds: int,
    warmup: int,
    steps_per_sample: int,
    progress: bool,
) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-2
    numel = sum(p.numel() for p in params)
    src = torch.randn(numel, generator=gen).to(device)
    dst = torch.empty_like(src)
    measure = timer(device)

    optimizers, failures, first_call = {}, {}, {}
    for name in impls:
        try:
            optimizers[name] = make_optimizer(name, params)
            first_call[name] = measure(optimizers[name].step)  # state init (and compilation)
        except Exception as err:  # recorded, not fatal: e.g. Inductor without a compiler
            failures[name] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            traceback.print_exc(file=sys.stderr)
            optimizers.pop(name, None)
    names = list(optimizers)

    def run(name: str) -> None:
        for _ in range(steps_per_sample):
            optimizers[name].step()

    def copy() -> None:
        for _ in range(steps_per_sample):
            dst.copy_(src)

    samples: dict[str, list[float]] = {name: [] for name in [*names, "copy"]}
    desc = f"{kind} set ({len(shapes)} tensors, {numel / 1e6:.1f}M params)"
    for r in tqdm(range(warmup + rounds), desc=desc, disable=not progress, file=sys.stderr):
        order = [*names, "copy"]
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            t = measure(copy if name == "copy" else lambda n=name: run(n))
            if r >= warmup:
                samples[name].append(t / steps_per_sample)

    traffic = adamw_step_traffic(numel)
    results = {}
    for name in names:
        s = summarise(samples[name])
        s["effective_gbps"] = traffic / s["median_s"] / 1e9
        s["first_call_s"] = first_call[name]
        results[name] = s
    copy_summary = summarise(samples["copy"])
    copy_summary["gbps"] = 8 * numel / copy_summary["median_s"] / 1e9
    out = {
        "tensors": len(shapes),
        "parameters": numel,
        "bytes_per_step": traffic,
        "steps_per_sample": steps_per_sample,
        "implementations": results,
        "copy": copy_summary,
        "failures": failures,
    }
    out["ratios"] = ratios(samples, names)
    return out


def ratios(samples: dict[str, list[float]], names: list[str]) -> dict:
    """Paired per-round ratios (same round, same load), then their median."""
    med = {n: statistics.median(samples[n]) for n in names}
    torch_names = [n for n in TORCH if n in names]
    course_names = [n for n in COURSE if n in names]
    if not torch_names or not course_names:
        return {}
    torch_fastest = min(torch_names, key=med.get)
    course_fastest = min(course_names, key=med.get)

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    out = {
        "torch_fastest": torch_fastest,
        "course_lib_fastest": course_fastest,
        "course_fastest_over_torch_fastest": paired(course_fastest, torch_fastest),
        "time_over_torch_fastest": {n: paired(n, torch_fastest) for n in names},
    }
    if "torch for-loop" in names:
        out["speedup_over_torch_for_loop"] = {n: paired("torch for-loop", n) for n in names}
    return out


def targets(result: dict, device: torch.device, machine: dict) -> dict:
    r = result["ratios"]
    if not r:
        return {}
    out = {
        "course_fastest_within_1.2x_of_torch_fastest": r["course_fastest_over_torch_fastest"]
        <= 1.2,
    }
    if "speedup_over_torch_for_loop" in r:
        speedup = r["speedup_over_torch_for_loop"][r["course_lib_fastest"]]
        out["course_fastest_2.5x_faster_than_torch_for_loop"] = speedup >= 2.5
    if device.type == "cuda":
        peak = machine.get("gpu_nominal_peak_gbps")
        best = result["implementations"][r["course_lib_fastest"]]["effective_gbps"]
        if peak:
            out["fraction_of_nominal_peak_bandwidth"] = best / peak
            out["at_least_80_percent_of_peak"] = best >= 0.8 * peak
        out["within_1.1x_of_torch_fused"] = (
            r["time_over_torch_fastest"][r["course_lib_fastest"]] <= 1.1
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adamw_step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--params",
        type=int,
        default=None,
        help="parameters in the large set (default: 2**25 = 33.5M on cpu, 2**30 = 1.07B on cuda)",
    )
    parser.add_argument("--large-tensors", type=int, default=8, help="tensors in the large set")
    parser.add_argument("--small-tensors", type=int, default=300, help="tensors in the small set")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 by default, as the course runs: with other processes on "
        "the cores, threads that wait on each other make timings erratic",
    )
    parser.add_argument("--sets", default="large,small", help="which sets: large, small or both")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled path")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)

    for name in ("large_tensors", "small_tensors", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets or any(s not in ("large", "small") for s in sets):
        parser.error(f"--sets must name large and/or small, got {args.sets!r}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: invalid device {args.device!r}")
    if device.type == "cuda" and not cuda:
        parser.error("--device cuda requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        parser.error("--device must be cpu or cuda[:N]")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    total = args.params or (2**30 if device.type == "cuda" else 2**25)
    if total < args.large_tensors:
        parser.error("--params must be at least --large-tensors")

    impls = [n for n in (*COURSE, *TORCH) if not (args.no_compile and "compiled" in n)]
    machine = describe_machine(device)
    result = {"benchmark": "adamw_step", "machine": machine, "sets": {}}
    result["config"] = {
        "rounds": args.rounds,
        "warmup": args.warmup,
        "large_params": total,
        "large_tensors": args.large_tensors,
        "small_tensors": args.small_tensors,
        "dtype": "float32",
        "bytes_per_parameter_per_step": 28,
    }
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for kind in sets:
            count = args.large_tensors if kind == "large" else args.small_tensors
            shapes = tensor_shapes(kind, total, count)
            steps = 1 if kind == "large" else 3
            res = bench_set(
                kind, shapes, device, impls, args.rounds, args.warmup, steps, not args.no_progress
            )
            res["targets"] = targets(res, device, machine)
            gc.collect()
            result["sets"][kind] = res
    machine["loadavg_at_end"] = loadavg()
    machine["wall_time_s"] = round(time.perf_counter() - started, 1)
    load = machine["loadavg_at_start"]
    machine["loaded"] = bool(
        load and max(load[0], machine["loadavg_at_end"][0]) > 0.5 * (machine["cpu_count"] or 1)
    )

    path = args.output or RESULTS / f"adamw_step_{device.type}.json"
    write_json(result, path)
    print_summary(result)
    print(f"wrote {path}")
    return 0


def print_summary(result: dict) -> None:
    m = result["machine"]
    print(
        f"{m.get('gpu', m['cpu'])} | torch {m['torch']} | threads {m['torch_threads']} | load {m['loadavg_at_start']}"
    )
    for kind, res in result["sets"].items():
        print(f"\n{kind} set: {res['tensors']} tensors, {res['parameters'] / 1e6:.1f}M parameters")
        print(f"{'implementation':<30} {'median ms':>10} {'GB/s':>8} {'x torch fastest':>16}")
        rel = res["ratios"].get("time_over_torch_fastest", {})
        for name, s in res["implementations"].items():
            print(
                f"{name:<30} {s['median_s'] * 1e3:>10.2f} {s['effective_gbps']:>8.2f} {rel.get(name, math.nan):>16.2f}"
            )
        print(
            f"{'copy (8 B/element)':<30} {res['copy']['median_s'] * 1e3:>10.2f} {res['copy']['gbps']:>8.2f}"
        )
        for name, why in res["failures"].items():
            print(f"FAILED {name}: {why}")
        print("targets:", res["targets"])


if __name__ == "__main__":
    sys.exit(main())
