"""course_lib.optim.Adam / AdamW against torch.optim.Adam / AdamW, step by step."""

from __future__ import annotations

import copy
import pickle
import re
import warnings

import pytest
import torch
from conftest import DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.optim import Adam, AdamW, adam_step

PAIRS = {"Adam": (Adam, torch.optim.Adam), "AdamW": (AdamW, torch.optim.AdamW)}
# Max elementwise relative difference allowed against torch (the targets).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def max_rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max(|theirs|, tiny), elementwise, in float64."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    scale = theirs.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return ((ours - theirs).abs() / scale).max().item()


def run_side_by_side(
    name: str,
    shapes: list[tuple[int, ...]],
    group_hypers: list[dict],
    common: dict,
    *,
    steps: int,
    dtype: torch.dtype,
    device: str,
    foreach: bool,
    torch_foreach: bool = False,
    seed: int = 0,
    lr_change_at: int | None = None,
    none_grad_every: int | None = None,
) -> list[tuple[int, int, float]]:
    """Train ours and torch's on identical gradients; return (step, param, rel diff) worst per step."""
    ours_cls, torch_cls = PAIRS[name]
    gen = torch.Generator().manual_seed(seed)
    ours_params = [
        torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype) for s in shapes
    ]
    torch_params = [p.clone() for p in ours_params]
    n_groups = len(group_hypers)

    def groups(params):
        return [{"params": params[i::n_groups], **hyper} for i, hyper in enumerate(group_hypers)]

    ours = ours_cls(groups(ours_params), foreach=foreach, **common)
    theirs = torch_cls(groups(torch_params), foreach=torch_foreach, **common)
    worst = []
    for step in range(steps):
        if lr_change_at is not None and step == lr_change_at:
            for opt in (ours, theirs):
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.3
        for i, (p, q) in enumerate(zip(ours_params, torch_params, strict=True)):
            if none_grad_every and (step + i) % none_grad_every == 0:
                p.grad = q.grad = None
                continue
            grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10 ** (i % 3 - 1)
            p.grad = grad.to(device, dtype)
            q.grad = grad.to(device, dtype)
        ours.step()
        theirs.step()
        diffs = [max_rel_diff(p, q) for p, q in zip(ours_params, torch_params, strict=True)]
        index = max(range(len(diffs)), key=diffs.__getitem__)
        worst.append((step, index, diffs[index]))
    return worst


def assert_matches(worst, tol: float, context: str) -> None:
    step, index, diff = max(worst, key=lambda w: w[2])
    assert diff <= tol, (
        f"{context}: after step {step + 1}, parameter {index} differs from torch by a relative "
        f"{diff:.3g} (allowed {tol:.0e})"
    )


hypers = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-4, 0.1),
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.9, 0.9999)),
        "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
        "weight_decay": st.sampled_from([0.0, 1e-4, 0.05]),
    }
)
shapes = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "multi-tensor"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@settings(max_examples=12, deadline=None)
@given(
    shapes=shapes,
    group_hypers=st.lists(hypers, min_size=1, max_size=3),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_over_200_steps(
    name, foreach, dtype, device, shapes, group_hypers, amsgrad, maximize, seed
):
    worst = run_side_by_side(
        name,
        shapes,
        group_hypers,
        {"amsgrad": amsgrad, "maximize": maximize},
        steps=200,
        dtype=dtype,
        device=device,
        foreach=foreach,
        seed=seed,
        lr_change_at=97,
    )
    assert_matches(worst, RTOL[dtype], f"{name}(foreach={foreach}, {dtype}, amsgrad={amsgrad})")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "multi-tensor"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_bfloat16_matches_torch(name, foreach, device):
    # Compared with torch's own path of the same kind: in bfloat16, torch's for-loop and
    # foreach AdamW can round the decay factor 1 - lr * wd differently, so they disagree with
    # each other, and each of ours must agree with its counterpart.
    worst = run_side_by_side(
        name,
        [(8, 4), (16,), (3, 3, 3)],
        [{"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-3}],
        {"amsgrad": True},
        steps=200,
        dtype=torch.bfloat16,
        device=device,
        foreach=foreach,
        torch_foreach=foreach,
        lr_change_at=100,
    )
    assert_matches(worst, 2 * torch.finfo(torch.bfloat16).eps, f"{name} bfloat16")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "multi-tensor"])
def test_parameters_without_grad_are_skipped(foreach, device):
    worst = run_side_by_side(
        "AdamW",
        [(4, 3), (5,), (2, 2)],
        [{"lr": 1e-2}],
        {},
        steps=60,
        dtype=torch.float64,
        device=device,
        foreach=foreach,
        none_grad_every=3,
    )
    assert_matches(worst, RTOL[torch.float64], "grads set to None on some steps")


def test_parameter_never_given_a_grad_keeps_no_state_and_does_not_move():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([used, unused], lr=0.1)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused, torch.ones(3))
    assert unused not in opt.state
    assert opt.state[used]["step"].item() == 1.0


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "multi-tensor"])
def test_complex_parameters_match_torch(foreach):
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(6, dtype=torch.complex128, generator=gen)
    q = p.clone()
    ours, theirs = AdamW([p], lr=0.05, foreach=foreach), torch.optim.AdamW([q], lr=0.05)
    for _ in range(50):
        g = torch.randn(6, dtype=torch.complex128, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert torch.equal(p, q)


def test_defaults_match_torch():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for name, (ours_cls, torch_cls) in PAIRS.items():
        ours, theirs = ours_cls(p).defaults, torch_cls(p).defaults
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach"):
            assert ours[key] == theirs[key], f"{name} default {key}: {ours[key]} != {theirs[key]}"


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_state_dict_round_trip_continues_identically(name, direction):
    ours_cls, torch_cls = PAIRS[name]
    first_cls, second_cls = (
        (torch_cls, ours_cls) if direction == "torch->ours" else (ours_cls, torch_cls)
    )
    gen = torch.Generator().manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model.double()
    hyper = {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.02, "amsgrad": True}
    first = first_cls(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-2}], **hyper
    )
    x, y = (
        torch.randn(32, 4, generator=gen, dtype=torch.float64),
        torch.randn(32, 1, generator=gen, dtype=torch.float64),
    )

    def train(opt, mdl, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(mdl(x), y).backward()
            opt.step()

    train(first, model, 25)
    # As written to and read from disk. Each optimizer gets its own copy: load_state_dict keeps
    # the 'step' tensors it is given, so two optimizers loaded from one dict would share them.
    saved = pickle.dumps(first.state_dict())

    reference_model = copy.deepcopy(model)
    reference = first_cls(
        [{"params": reference_model[0].parameters()}, {"params": reference_model[2].parameters()}]
    )
    reference.load_state_dict(pickle.loads(saved))
    resumed_model = copy.deepcopy(model)
    resumed = second_cls(
        [{"params": resumed_model[0].parameters()}, {"params": resumed_model[2].parameters()}]
    )
    resumed.load_state_dict(pickle.loads(saved))
    assert resumed.param_groups[1]["lr"] == 1e-2
    assert set(resumed.state[next(resumed_model.parameters())]) == {
        "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"
    }  # fmt: skip

    train(reference, reference_model, 25)
    train(resumed, resumed_model, 25)
    for a, b in zip(reference_model.parameters(), resumed_model.parameters(), strict=True):
        assert max_rel_diff(b, a) <= 1e-12, (
            f"{direction}: resumed training diverged from the original"
        )


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1e-3}, "Invalid learning rate: -0.001"),
        ({"lr": float("nan")}, "Invalid learning rate: nan"),
        ({"eps": -1e-8}, "Invalid epsilon value: -1e-08"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, "Tensor lr must be 1-element"),
    ],
)
def test_invalid_hyperparameters_raise_like_torch(cls, kwargs, message):
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(p, **kwargs)
    torch_cls = PAIRS[cls.__name__][1]
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_cls(p, **kwargs)


def test_invalid_group_hyperparameters_raise():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        AdamW([{"params": p, "lr": -1}])
    opt = AdamW(p)
    with pytest.raises(ValueError, match=r"Invalid beta parameter at index 1: 1\.5"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "betas": (0.9, 1.5)})


@pytest.mark.parametrize("betas", [(0.9,), 0.9, (0.9, 0.99, 0.999)])
def test_betas_must_be_a_pair(betas):
    with pytest.raises(TypeError, match="betas must be a pair"):
        Adam([torch.nn.Parameter(torch.zeros(2))], betas=betas)


def test_non_numeric_lr_is_a_type_error():
    with pytest.raises(TypeError, match="lr must be a real number"):
        Adam([torch.nn.Parameter(torch.zeros(2))], lr="0.001")


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_empty_parameter_list_raises_as_torch_does(cls):
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        cls([])


@pytest.mark.parametrize("foreach", [False, True])
def test_sparse_gradients_raise(foreach):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = Adam(emb.parameters(), foreach=foreach)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


def test_closure_loss_is_returned_and_gradients_are_computed():
    w = torch.nn.Parameter(torch.tensor([2.0]))
    opt = Adam([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 4.0
    assert w.item() == pytest.approx(1.9)  # first Adam step is lr * sign(grad)


def test_scheduler_drives_the_learning_rate_without_warnings():
    w = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([w], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            w.grad = torch.ones(3)
            opt.step()
            sched.step()
            seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.1, 0.05, 0.05, 0.025, 0.025]


def test_bias_correction_makes_the_first_step_exactly_lr():
    for scale in (1e-6, 1.0, 1e3):
        param = torch.zeros((), dtype=torch.float64)
        m, v = torch.zeros_like(param), torch.zeros_like(param)
        grad = torch.tensor(scale, dtype=torch.float64)
        adam_step(param, grad, m, v, None, 1, lr=1e-3, beta1=0.9, beta2=0.999, eps=0.0)
        assert param.item() == pytest.approx(-1e-3, rel=1e-12), (
            f"gradient {scale}: the first step should be -lr whatever the gradient's size; "
            "is the bias correction 1 - beta**t computed with t = 1?"
        )
