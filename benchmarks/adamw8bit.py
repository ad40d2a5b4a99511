"""8-bit AdamW states against fp32 AdamW: state bytes per parameter and step time.

The state is measured exactly (``numel * element_size`` over every state tensor, after one
step). Step times are medians over rounds, each round timing every optimizer once on the
same parameters, and ratios are taken within a round.

    python -m benchmarks.adamw8bit --help
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks.common import RESULTS, describe_machine, loadavg, summarise, timer, write_json
from course_lib.memory import optimizer_state_bytes, state_bytes_per_parameter
from course_lib.optim import AdamW
from course_lib.optim.adamw8bit import AdamW8bit

IMPLEMENTATIONS = {
    "course_lib AdamW (fp32 states, loop)": lambda ps: AdamW(ps, foreach=False),
    "torch AdamW fused (fp32 states)": lambda ps: torch.optim.AdamW(ps, fused=True),
    "course_lib AdamW8bit (block 2048)": lambda ps: AdamW8bit(ps),
    "course_lib AdamW8bit (block 256)": lambda ps: AdamW8bit(ps, block_size=256),
}
REFERENCE = "course_lib AdamW (fp32 states, loop)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adamw8bit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--params", type=int, default=2**22, help="parameters in all (4.2M)")
    parser.add_argument("--tensors", type=int, default=8, help="equal matrices they form")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
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
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)

    per = args.params // args.tensors
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(per // 1024, 1024, generator=gen).to(device) for _ in range(args.tensors)]
    params = [p.requires_grad_() for p in params]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-2
    numel = sum(p.numel() for p in params)
    optimizers = {name: make(params) for name, make in IMPLEMENTATIONS.items()}
    machine = describe_machine(device)
    measure = timer(device)
    for opt in optimizers.values():
        opt.step()  # creates the state
    samples = {name: [] for name in optimizers}
    names = list(optimizers)
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
        s["state_bytes"] = optimizer_state_bytes(opt)
        s["state_bytes_per_parameter"] = state_bytes_per_parameter(opt)
        s["time_over_fp32_loop"] = statistics.median(
            a / b for a, b in zip(samples[name], samples[REFERENCE], strict=True)
        )
        results[name] = s
    machine["loadavg_at_end"] = loadavg()
    machine["wall_time_s"] = round(time.perf_counter() - started, 1)
    out = {
        "benchmark": "adamw8bit",
        "machine": machine,
        "config": {"parameters": numel, "tensors": args.tensors, "rounds": args.rounds},
        "implementations": results,
    }
    path = args.output or RESULTS / f"adamw8bit_{device.type}.json"
    write_json(out, path)
    print(
        f"{machine.get('gpu', machine['cpu'])} | torch {machine['torch']} | load {machine['loadavg_at_start']}"
    )
    print(f"{numel / 1e6:.1f}M parameters in {args.tensors} tensors")
    print(f"{'optimizer':<38} {'state B/param':>14} {'median ms':>10} {'x fp32 loop':>12}")
    for name, s in results.items():
        print(
            f"{name:<38} {s['state_bytes_per_parameter']:>14.4f} {s['median_s'] * 1e3:>10.1f} "
            f"{s['time_over_fp32_loop']:>12.2f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
