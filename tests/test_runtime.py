"""The one place that picks the device, the scale and the seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from course_lib import runtime


def test_default_device_is_cuda_when_available_else_cpu(monkeypatch):
    monkeypatch.delenv(runtime.DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.get_device().type == expected


def test_environment_variable_overrides_the_default(monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert runtime.get_device() == torch.device("cpu")


def test_argument_overrides_the_environment(monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "not-a-device")
    assert runtime.get_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("value", ["not-a-device", "tpu", "cuda:99"])
def test_bad_or_missing_devices_are_clear_errors(monkeypatch, value):
    if value == "cuda:99" and not torch.cuda.is_available():
        message = "CUDA is not available"
    elif value == "cuda:99":
        message = "CUDA device"
    else:
        message = "device"
    monkeypatch.setenv(runtime.DEVICE_ENV, value)
    with pytest.raises(ValueError, match=message):
        runtime.get_device()


def test_scale_defaults_to_small_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(runtime.SCALE_ENV, raising=False)
    assert runtime.get_scale() == "small"
    assert runtime.scaled(small=1, full=2) == 1
    monkeypatch.setenv(runtime.SCALE_ENV, "FULL")
    assert runtime.get_scale() == "full"
    assert runtime.scaled(small=1, full=2) == 2


def test_unknown_scale_is_rejected(monkeypatch):
    monkeypatch.setenv(runtime.SCALE_ENV, "medium")
    with pytest.raises(ValueError, match=r"COURSE_SCALE='medium'.*small, full"):
        runtime.get_scale()


def test_seed_everything_makes_every_generator_repeat():
    def draw():
        return random.random(), np.random.rand()  # noqa: NPY002 -- checks the global generator, torch.rand(()).item()

    runtime.seed_everything(123)
    first = draw()
    runtime.seed_everything(123)
    assert draw() == first
    runtime.seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize(
    ("seed", "error"), [(-1, ValueError), (2**32, ValueError), (1.5, TypeError)]
)
def test_bad_seeds_are_rejected(seed, error):
    with pytest.raises(error, match="seed"):
        runtime.seed_everything(seed)


def test_setup_prints_the_device_and_sets_threads(monkeypatch, capsys):
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    monkeypatch.setenv(runtime.SCALE_ENV, "small")
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    try:
        assert runtime.setup(seed=0) == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert out.startswith("device: cpu (") and "scale: small" in out and torch.__version__ in out


def test_threads_default_to_one_at_small_scale(monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.setenv(runtime.SCALE_ENV, "small")
    assert runtime.get_threads() == 1
    monkeypatch.setenv(runtime.SCALE_ENV, "full")
    assert runtime.get_threads() is None
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert runtime.get_threads() == 3


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_thread_counts_are_rejected(monkeypatch, value):
    monkeypatch.setenv(runtime.THREADS_ENV, value)
    with pytest.raises(ValueError, match="COURSE_THREADS"):
        runtime.get_threads()
