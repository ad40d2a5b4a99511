"""Data-parallel training with PyTorch's ``torch.distributed`` and ``DistributedDataParallel``.

``N`` processes each hold a full copy of the model. At every step all of them draw the same
global batch of ``N * b`` examples (the same seed), each takes its own contiguous slice of
``b`` examples, computes its gradient, and DDP averages the gradients over the processes
(an all-reduce, overlapped with the backward pass) before every process applies the same
optimizer step. The average of ``N`` slice means is the mean over the global batch, so the
run follows the single-process run with batch ``N * b``, up to the order of floating-point
additions; ``tests/test_distributed.py`` checks exactly that.

The processes are started by ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each one. The backend is ``gloo`` on
the CPU and ``nccl`` on CUDA GPUs (one process per GPU, ``cuda:LOCAL_RANK``).
:mod:`course_lib.ddp_train` is the entry point::

    # two processes on this machine's CPU (gloo)
    torchrun --nproc_per_node=2 -m course_lib.ddp_train --batch-size 32 --steps 200

    # every GPU of this machine (nccl)
    torchrun --nproc_per_node=gpu -m course_lib.ddp_train --batch-size 32 --steps 200

    # two machines with 8 GPUs each: run on both, with node_rank 0 and 1
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
        --master_addr=<address of node 0> --master_port=29500 \\
        -m course_lib.ddp_train --batch-size 32 --steps 200

:func:`launch_local` starts such a run on this machine's CPU from Python, on ``127.0.0.1``
with a free port, with a timeout, and cleans up every process it started.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from course_lib import runtime
from course_lib.accumulation import accumulate_gradients
from course_lib.batch_scaling import RULES, scale_hyperparameters
from course_lib.data import badly_scaled_teacher, minibatches
from course_lib.models import MLP

__all__ = [
    "DDPConfig",
    "DistributedContext",
    "cleanup",
    "default_backend",
    "find_free_port",
    "init_distributed",
    "launch_local",
    "make_batches",
    "make_model",
    "make_optimizer",
    "make_problem",
    "shard",
    "torchrun_command",
    "train_data_parallel",
]

OPTIMIZERS = ("adam", "sgd")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOOPBACK = "127.0.0.1"


# --- the experiment, shared by the data-parallel run and its single-process reference ------


@dataclass(frozen=True)
class DDPConfig:
    """One training run. ``batch_size`` is per process; the global batch is ``world_size`` times it.

    With ``scale_rule`` set (``"linear"`` or ``"sqrt"``), ``lr``, ``betas``, ``eps`` and
    ``warmup_steps`` are the values for a global batch of ``base_batch_size``, and
    :func:`course_lib.batch_scaling.scale_hyperparameters` adapts them to the real global batch.
    """

    batch_size: int = 32
    steps: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    scale_rule: str | None = None
    base_batch_size: int | None = None
    micro_batch_size: int | None = None
    samples: int = 8192
    dim: int = 16
    hidden: int = 32
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "samples", "dim", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (expected an int >= 1)")
        if not self.lr > 0:
            raise ValueError(f"Invalid lr: {self.lr} (expected lr > 0)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Invalid optimizer: {self.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"Invalid dtype: {self.dtype!r} (expected one of {', '.join(DTYPES)})")
        if self.scale_rule is not None:
            if self.scale_rule not in RULES:
                raise ValueError(
                    f"Invalid scale_rule: {self.scale_rule!r} (expected one of {', '.join(RULES)})"
                )
            if self.base_batch_size is None:
                raise ValueError("Invalid base_batch_size: None (scale_rule needs it)")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ValueError(
                f"Invalid micro_batch_size: {self.micro_batch_size} "
                f"(expected 1 <= micro_batch_size <= batch_size = {self.batch_size})"
            )

    def hyperparameters(self, world_size: int) -> dict:
        """``lr``, ``betas``, ``eps``, ``warmup_steps`` for the global batch of ``world_size``."""
        hp = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "warmup": self.warmup_steps}
        if self.scale_rule is not None:
            scaled = scale_hyperparameters(
                self.scale_rule,
                base_batch_size=self.base_batch_size,
                batch_size=self.batch_size * world_size,
                lr=self.lr,
                betas=self.betas,
                eps=self.eps,
                warmup_steps=self.warmup_steps,
            )
            hp = {"lr": scaled.lr, "betas": scaled.betas, "eps": scaled.eps}
            hp["warmup"] = scaled.warmup_steps
        return hp


def make_problem(config: DDPConfig) -> tuple[Tensor, Tensor]:
    """The data set: the course's badly scaled teacher, generated from ``config.seed``."""
    generator = torch.Generator().manual_seed(config.seed)
    x, y = badly_scaled_teacher(config.samples, config.dim, generator=generator)
    dtype = DTYPES[config.dtype]
    return x.to(dtype), y.to(dtype)


def make_model(config: DDPConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The MLP every process starts from: the same weights for the same ``config.seed``."""
    torch.manual_seed(config.seed)
    return MLP(config.dim, 1, hidden=config.hidden).to(device, DTYPES[config.dtype])


def make_batches(config: DDPConfig, x: Tensor, y: Tensor, world_size: int = 1):
    """Global batches of ``world_size * batch_size``, the same sequence in every process."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    return minibatches(x, y, config.batch_size * world_size, generator=generator)


def make_optimizer(
    config: DDPConfig, model: nn.Module, world_size: int = 1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """``torch.optim.Adam`` or SGD (momentum 0.9), and a linear warmup when there is one."""
    hp = config.hyperparameters(world_size)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(
            model.parameters(), lr=hp["lr"], betas=hp["betas"], eps=hp["eps"]
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9)
    scheduler = None
    if hp["warmup"] > 0:
        from course_lib import schedules

        schedule = functools.partial(
            schedules.linear_warmup, peak_lr=hp["lr"], num_warmup_steps=hp["warmup"]
        )
        scheduler = schedules.as_lambda_lr(optimizer, schedule)
    return optimizer, scheduler


# --- process groups --------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and saves."""
        return self.rank == 0


def default_backend(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(
            f"{name} is not set: start this with torchrun, e.g. "
            "`torchrun --nproc_per_node=2 -m course_lib.ddp_train`"
        )
    return int(value)


def init_distributed(device: str | None = None, backend: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` set up, and pick this process's device.

    ``device``: ``"cpu"``, ``"cuda"`` or None (``COURSE_DEVICE``, else CUDA when available,
    else the CPU). On CUDA each process takes ``cuda:LOCAL_RANK``. ``backend`` defaults to
    :func:`default_backend` of the device.
    """
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    chosen = runtime.get_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                "start at most one process per GPU (--nproc_per_node)"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        raise ValueError(f"Invalid device: {chosen} (data-parallel runs use cpu or cuda)")
    backend = backend or default_backend(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, chosen, backend)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(x: Tensor, y: Tensor, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
    """Rank ``rank``'s contiguous slice of a global batch that ``world_size`` divides evenly."""
    if not 0 <= rank < world_size:
        raise ValueError(f"Invalid rank: {rank} (expected 0 <= rank < world_size = {world_size})")
    if len(x) % world_size:
        raise ValueError(
            f"Invalid batch: {len(x)} examples do not split evenly over {world_size} processes"
        )
    size = len(x) // world_size
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


# --- the data-parallel run -------------------------------------------------------------------


def train_data_parallel(
    config: DDPConfig,
    context: DistributedContext,
    *,
    log_every: int = 10,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Train ``config`` with DDP in every process; rank 0 prints a log through ``print_fn``.

    Returns (in every process) the global-batch losses, the learning rates, the final
    ``state_dict`` of the model (on the CPU), the number of examples this process computed
    gradients on, and the largest difference between the replicas' weights, which DDP keeps
    at zero.
    """
    from torch.nn.parallel import DistributedDataParallel

    world = context.world_size
    x, y = make_problem(config)
    model = make_model(config, context.device)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids)
    optimizer, scheduler = make_optimizer(config, ddp, world)
    batches = make_batches(config, x, y, world)
    hp = config.hyperparameters(world)

    # Every rank reports its set-up; rank 0 prints them all, in rank order.
    info = f"rank {context.rank}/{world} on {context.device} ({context.backend})"
    infos = [None] * world
    dist.all_gather_object(infos, info)
    if context.is_main:
        for line in infos:
            print_fn(line)
        print_fn(
            f"per-process batch {config.batch_size} x {world} processes = global batch "
            f"{config.batch_size * world}; {config.optimizer} lr {hp['lr']:.4g}"
            + (
                f" ({config.scale_rule} rule from batch {config.base_batch_size})"
                if config.scale_rule
                else ""
            )
            + (f", warmup {hp['warmup']} steps" if hp["warmup"] else "")
            + (f", micro-batches of {config.micro_batch_size}" if config.micro_batch_size else "")
        )

    losses, lrs = [], []
    examples = 0
    micro = config.micro_batch_size or config.batch_size
    loss_fn = nn.functional.mse_loss
    for step in range(1, config.steps + 1):
        xg, yg = next(batches)
        xb, yb = (t.to(context.device) for t in shard(xg, yg, context.rank, world))
        examples += len(xb)
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.zero_grad(set_to_none=True)
        local_loss = accumulate_gradients(ddp, xb, yb, micro_batch_size=micro, loss_fn=loss_fn)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # The global batch's loss: the mean of the processes' slice means.
        total = torch.tensor([local_loss], dtype=torch.float64, device=context.device)
        dist.all_reduce(total)
        loss = total.item() / world
        losses.append(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss}, the run diverged")
        if context.is_main and (step % log_every == 0 or step in (1, config.steps)):
            print_fn(f"step {step:>5}/{config.steps} | loss {loss:.5f} | lr {lrs[-1]:.3g}")

    # DDP starts every replica from rank 0's weights and applies the same averaged gradient,
    # so the replicas should agree exactly; measure it.
    drift = torch.zeros((), dtype=torch.float64, device=context.device)
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        drift = torch.maximum(drift, (p.detach() - reference).abs().max().double())
    dist.all_reduce(drift, op=dist.ReduceOp.MAX)
    if context.is_main:
        print_fn(f"largest weight difference between replicas: {drift.item():.1e}")
    return {
        "losses": losses,
        "lrs": lrs,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "replica_drift": drift.item(),
        "examples_per_process": examples,
        "world_size": world,
        "config": asdict(config),
    }


# --- launching from Python -------------------------------------------------------------------


def find_free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def torchrun_command(nproc: int, args: Sequence[str], *, port: int) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``) for ``nproc`` processes on this
    machine, rendezvous on ``127.0.0.1:port``, running ``course_lib.ddp_train`` with ``args``."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"Invalid nproc: {nproc!r} (expected an int >= 1)")
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", f"--nproc_per_node={nproc}",
        f"--master_addr={LOOPBACK}", f"--master_port={port}",
        "-m", "course_lib.ddp_train", *map(str, args),
    ]  # fmt: skip


def launch_local(
    nproc: int,
    args: Sequence[str],
    *,
    timeout: float = 120.0,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``course_lib.ddp_train`` on ``nproc`` CPU processes (gloo) and wait for it.

    Everything stays on ``127.0.0.1``: the rendezvous port is a free one, and gloo is told to
    use the loopback interface. Each process uses one CPU thread. torchrun and its workers run
    in their own process group, which is killed if the run outlives ``timeout`` seconds
    (``TimeoutError``) or this call is interrupted, so no process is left behind. Returns the
    finished process with ``stdout`` and ``stderr``; a non-zero exit raises ``RuntimeError``
    carrying the output.
    """
    if not timeout > 0:
        raise ValueError(f"Invalid timeout: {timeout} (expected seconds > 0)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_PROGRESS": "0", "COURSE_DEVICE": "cpu"}
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    command = torchrun_command(nproc, args, port=find_free_port())
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        _kill_group(process)
        stdout, stderr = process.communicate()
        raise TimeoutError(
            f"torchrun did not finish in {timeout:g} s; killed it.\n{stdout}\n{stderr}"
        ) from err
    except BaseException:
        _kill_group(process)
        process.communicate()
        raise
    finally:
        _kill_group(process)  # workers that outlived torchrun, if any
    if process.returncode != 0:
        raise RuntimeError(
            f"torchrun exited with {process.returncode}:\n{' '.join(command)}\n{stdout}\n{stderr}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s, to the process group started for ``process`` only."""
    deadline = time.monotonic() + 5.0
    sig = signal.SIGTERM
    while True:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # nothing left in the group
            break
        if sig is signal.SIGKILL:
            break
        time.sleep(0.05)
        process.poll()  # reap the leader, so that an empty group reads as gone
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        else:
            sig = 0  # only probe until the deadline
    process.poll()
