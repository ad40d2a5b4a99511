"""Entry point of the data-parallel experiment: start it with ``torchrun``.

::

    torchrun --nproc_per_node=2 -m course_lib.ddp_train --batch-size 32 --steps 200

Each process trains a replica on its slice of every global batch (``--batch-size`` examples
per process); rank 0 prints the set-up, the global-batch loss every ``--log-every`` steps and
the largest weight difference between replicas at the end, and with ``--save PATH`` writes
the final weights and the losses there (``torch.save``). ``--scale-rule linear|sqrt`` with
``--base-batch-size`` adapts ``--lr``, the betas, eps and ``--warmup-steps`` (given for that
base batch) to the global batch, so the same command is right on 2 processes or on 64.
See :mod:`course_lib.distributed` for multi-GPU and multi-machine launches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from course_lib import distributed, runtime
from course_lib.batch_scaling import RULES


def parse_args(argv: list[str] | None = None) -> tuple[distributed.DDPConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m course_lib.ddp_train",
        description=__doc__.split("\n")[0],
    )
    add = parser.add_argument
    add("--batch-size", type=int, default=32, help="examples per process and step (default 32)")
    add("--steps", type=int, default=100, help="optimizer steps (default 100)")
    add(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate (for --base-batch-size if a rule is set)",
    )
    add("--optimizer", choices=distributed.OPTIMIZERS, default="adam")
    add("--beta1", type=float, default=0.9)
    add("--beta2", type=float, default=0.999)
    add("--eps", type=float, default=1e-8)
    add("--warmup-steps", type=int, default=0, help="linear warmup length (default 0: none)")
    add("--scale-rule", choices=RULES, default=None, help="scale lr etc. from --base-batch-size")
    add(
        "--base-batch-size", type=int, default=None, help="global batch the hyperparameters are for"
    )
    add("--micro-batch-size", type=int, default=None, help="accumulate gradients in micro-batches")
    add("--samples", type=int, default=8192, help="size of the synthetic data set")
    add("--dim", type=int, default=16)
    add("--hidden", type=int, default=32)
    add("--seed", type=int, default=0)
    add("--dtype", choices=tuple(distributed.DTYPES), default="float32")
    add("--device", default=None, help="cpu or cuda (default: COURSE_DEVICE, else cuda if any)")
    add("--backend", default=None, help="gloo or nccl (default: nccl on cuda, gloo on cpu)")
    add("--log-every", type=int, default=10)
    add("--save", type=Path, default=None, help="rank 0 saves weights and losses here")
    args = parser.parse_args(argv)
    try:
        config = distributed.DDPConfig(
            batch_size=args.batch_size,
            steps=args.steps,
            lr=args.lr,
            optimizer=args.optimizer,
            betas=(args.beta1, args.beta2),
            eps=args.eps,
            warmup_steps=args.warmup_steps,
            scale_rule=args.scale_rule,
            base_batch_size=args.base_batch_size,
            micro_batch_size=args.micro_batch_size,
            samples=args.samples,
            dim=args.dim,
            hidden=args.hidden,
            seed=args.seed,
            dtype=args.dtype,
        )
    except ValueError as err:
        parser.error(str(err))
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    torch.set_num_threads(runtime.get_threads() or torch.get_num_threads())
    context = distributed.init_distributed(device=args.device, backend=args.backend)
    try:
        result = distributed.train_data_parallel(
            config, context, log_every=args.log_every, print_fn=lambda line: print(line, flush=True)
        )
        if context.is_main and args.save is not None:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            partial = args.save.with_name(args.save.name + ".partial")
            torch.save(result, partial)
            partial.replace(args.save)  # never leave a half-written file under the real name
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
