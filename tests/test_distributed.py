"""Data-parallel training: 2 processes x batch b follow 1 process x batch 2b.

The launches use torchrun on this machine's CPU (gloo), on 127.0.0.1 with a free port, with
a timeout; ``launch_local`` kills its whole process group when it returns or fails.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from course_lib import distributed
from course_lib.distributed import DDPConfig, launch_local
from course_lib.train import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="this torch build has no torch.distributed with gloo",
    ),
]

TIMEOUT = 240
CONFIG = DDPConfig(batch_size=8, steps=12, lr=1e-3, optimizer="adam", warmup_steps=4,
                   scale_rule="sqrt", base_batch_size=8, samples=512, dim=6, hidden=8,
                   seed=3, dtype="float64")  # fmt: skip


def single_process_reference(config: DDPConfig, world_size: int) -> tuple[dict, list[float]]:
    """The plain loop, one process, batch world_size * b, same data, init and optimizer."""
    big = dataclasses.replace(config, batch_size=config.batch_size * world_size)
    x, y = distributed.make_problem(big)
    model = distributed.make_model(big)
    optimizer, scheduler = distributed.make_optimizer(big, model, world_size=1)
    history = train(model, optimizer, distributed.make_batches(big, x, y), big.steps,
                    scheduler=scheduler, progress=False)  # fmt: skip
    return model.state_dict(), history.losses


def cli_args(config: DDPConfig, save: Path) -> list[str]:
    args = [
        "--batch-size", config.batch_size, "--steps", config.steps, "--lr", config.lr,
        "--optimizer", config.optimizer, "--warmup-steps", config.warmup_steps,
        "--scale-rule", config.scale_rule, "--base-batch-size", config.base_batch_size,
        "--samples", config.samples, "--dim", config.dim, "--hidden", config.hidden,
        "--seed", config.seed, "--dtype", config.dtype, "--log-every", 4, "--save", save,
    ]  # fmt: skip
    if config.micro_batch_size:
        args += ["--micro-batch-size", config.micro_batch_size]
    return [str(a) for a in args]


@pytest.mark.parametrize("micro_batch_size", [None, 3], ids=["whole", "accumulated-3-3-2"])
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, micro_batch_size):
    config = dataclasses.replace(CONFIG, micro_batch_size=micro_batch_size)
    save = tmp_path / "ddp.pt"
    result = launch_local(2, cli_args(config, save), timeout=TIMEOUT)
    assert "rank 0/2 on cpu (gloo)" in result.stdout and "rank 1/2 on cpu (gloo)" in result.stdout
    assert "global batch 16" in result.stdout, result.stdout
    assert "largest weight difference between replicas: 0.0e+00" in result.stdout, result.stdout
    saved = torch.load(save, weights_only=True)
    assert saved["world_size"] == 2 and len(saved["losses"]) == config.steps
    assert saved["examples_per_process"] == config.steps * config.batch_size, (
        "each process should see only its own slice of every global batch"
    )
    # the sqrt rule from a base batch of 8 to the global 16: lr * sqrt(2) after warmup, and
    # the warmup of 4 steps at batch 8 is 2 steps at batch 16
    assert saved["lrs"][0] == 0.0
    assert saved["lrs"][-1] == pytest.approx(1e-3 * 2**0.5, rel=1e-12)

    state, losses = single_process_reference(config, world_size=2)
    torch.testing.assert_close(torch.tensor(saved["losses"]), torch.tensor(losses),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    moved = (
        saved["state_dict"]["0.weight"] - distributed.make_model(config).state_dict()["0.weight"]
    )
    assert moved.abs().max() > 1e-3, "the run should have moved the weights"
    for name, value in state.items():
        torch.testing.assert_close(
            saved["state_dict"][name], value, rtol=1e-10, atol=1e-12,
            msg=lambda m, name=name: f"{name}: 2 x batch 8 (DDP) differs from 1 x batch 16: {m}",
        )  # fmt: skip


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes")
def test_a_run_past_its_timeout_is_killed_with_all_its_processes(tmp_path):
    marker = "--samples 987653"  # unique, so that only this test's processes match
    args = ["--samples", "987653", "--steps", "100000", "--batch-size", "8"]
    with pytest.raises(TimeoutError, match="did not finish"):
        launch_local(2, args, timeout=4)
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == [], "launch_local left processes behind"


def test_torchrun_command_stays_on_the_loopback():
    command = distributed.torchrun_command(2, ["--steps", "5"], port=12345)
    assert "--master_addr=127.0.0.1" in command and "--master_port=12345" in command
    assert "--nproc_per_node=2" in command and command[-2:] == ["--steps", "5"]
    assert 1024 <= distributed.find_free_port() < 65536
    with pytest.raises(ValueError, match="nproc"):
        distributed.torchrun_command(0, [], port=1)


def test_init_outside_torchrun_says_how_to_start(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_distributed(device="cpu")


def test_shard_and_backend():
    x, y = torch.arange(12.0)[:, None], torch.arange(12.0)[:, None]
    parts = [distributed.shard(x, y, r, 3)[0].flatten().tolist() for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="split evenly"):
        distributed.shard(x, y, 0, 5)
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(x, y, 3, 3)
    assert distributed.default_backend("cpu") == "gloo"
    assert distributed.default_backend("cuda:0") == "nccl"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"), ({"optimizer": "lamb"}, "optimizer"),
     ({"scale_rule": "sqrt"}, "base_batch_size"), ({"micro_batch_size": 64}, "micro_batch_size"),
     ({"dtype": "float16"}, "dtype")],
)  # fmt: skip
def test_bad_configs_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        DDPConfig(**kwargs)


def test_cli_rejects_bad_arguments(capsys):
    from course_lib import ddp_train

    with pytest.raises(SystemExit):
        ddp_train.parse_args(["--micro-batch-size", "100", "--batch-size", "8"])
    assert "micro_batch_size" in capsys.readouterr().err
