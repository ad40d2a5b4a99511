"""How long each chapter took to execute, read from the book's execution cache.

``make book`` prints this table at the end of a build; ``--json`` also records it under
``benchmarks/results/`` with the machine described. The budget is the whole book's: 10
minutes at ``small`` scale on two CPU cores, 45 minutes at ``full`` scale on one GPU.

    python -m benchmarks.book_times [--cache _build/.jupyter_cache] [--json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.common import RESULTS, describe_machine, write_json

BUDGET_S = {"small": 600.0, "full": 2700.0}


def chapter_times(cache: Path) -> dict[str, float]:
    """Execution seconds of each chapter in a jupyter-cache folder, by chapter name."""
    from jupyter_cache import get_cache

    if not (cache / "global.db").exists():
        raise SystemExit(f"{cache} holds no execution cache: build the book first (make book)")
    times = {}
    for record in get_cache(str(cache)).list_cache_records():
        seconds = (record.data or {}).get("execution_seconds")
        if seconds is not None:
            times[Path(record.uri).stem] = float(seconds)
    return dict(sorted(times.items()))


def table(times: dict[str, float], scale: str) -> str:
    budget = BUDGET_S[scale]
    total = sum(times.values())
    width = max(len(name) for name in [*times, "total"])
    lines = [f"{'chapter':<{width}}  seconds  share of the {budget / 60:.0f}-minute budget"]
    for name, seconds in times.items():
        lines.append(f"{name:<{width}}  {seconds:7.1f}  {seconds / budget:6.1%}")
    lines.append(f"{'total':<{width}}  {total:7.1f}  {total / budget:6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("_build/.jupyter_cache"))
    parser.add_argument("--json", action="store_true", help="record the table in results/")
    args = parser.parse_args(argv)
    scale = os.environ.get("COURSE_SCALE", "small").strip().lower() or "small"
    if scale not in BUDGET_S:
        raise SystemExit(f"COURSE_SCALE={scale!r}: expected small or full")
    times = chapter_times(args.cache)
    if not times:
        raise SystemExit(f"{args.cache} records no executed chapter")
    print(f"Chapter execution times ({scale} scale, from {args.cache}):")
    print(table(times, scale))
    if args.json:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        data = {
            "benchmark": "book_times",
            "machine": describe_machine(device),
            "scale": scale,
            "budget_s": BUDGET_S[scale],
            "chapters_s": times,
            "total_s": sum(times.values()),
        }
        print(f"written: {write_json(data, RESULTS / f'book_times_{scale}.json')}")


if __name__ == "__main__":
    main()
