"""course_lib.param_groups: which parameters get weight decay, and the groups that say so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.optim import AdamW
from course_lib.param_groups import param_groups, split_decay


class TinyLM(nn.Module):
    """Embedding, a block with LayerNorm and RMSNorm, and an output head tied to the embedding."""

    def __init__(self, vocab: int = 50, dim: int = 8, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(4, dim))  # a bare 2-d parameter: decayed
        self.norm = nn.LayerNorm(dim)
        self.rms = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim, bias=False))
        self.bn = nn.BatchNorm1d(dim)
        self.conv = nn.Conv1d(dim, dim, 3)
        self.scale = nn.Parameter(torch.ones(()))  # 0-d: not decayed
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight


def test_split_by_module_type_and_dimension():
    decay, no_decay = split_decay(TinyLM())
    assert sorted(decay) == ["conv.weight", "mlp.0.weight", "mlp.2.weight", "pos"]
    assert sorted(no_decay) == sorted(
        [
            "embed.weight",
            "norm.weight",
            "norm.bias",
            "rms.weight",
            "mlp.0.bias",
            "bn.weight",
            "bn.bias",
            "conv.bias",
            "scale",
        ]
    )


def test_tied_embedding_listed_once_and_follows_the_embedding():
    decay, no_decay = split_decay(TinyLM(tie=True))
    assert "head.weight" not in decay + no_decay, "a tied tensor must appear once"
    assert "embed.weight" in no_decay
    untied_decay, _ = split_decay(TinyLM(tie=False))
    assert "head.weight" in untied_decay, "an untied output head is an ordinary matrix"


def test_decay_embeddings_flag_and_frozen_parameters():
    model = TinyLM()
    decay, _ = split_decay(model, decay_embeddings=True)
    assert "embed.weight" in decay
    model.mlp[0].weight.requires_grad_(False)
    decay, no_decay = split_decay(model)
    assert "mlp.0.weight" not in decay + no_decay


def test_every_trainable_tensor_in_exactly_one_group():
    model = TinyLM()
    groups = param_groups(model, 0.1, lr=3e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(g["lr"] == 3e-4 for g in groups)
    named = dict(model.named_parameters())
    for g in groups:
        assert [id(named[n]) for n in g["param_names"]] == [id(p) for p in g["params"]]


def test_groups_drive_an_optimizer_as_intended():
    torch.manual_seed(0)
    model = TinyLM(tie=False)
    optimizer = AdamW(param_groups(model, 0.5), lr=0.1)
    torch_optimizer = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    assert [g["weight_decay"] for g in torch_optimizer.param_groups] == [0.5, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay moves anything
    optimizer.step()
    for name, p in model.named_parameters():
        if name in ("mlp.0.weight", "mlp.2.weight", "head.weight", "conv.weight", "pos"):
            assert torch.allclose(p, before[name] * (1 - 0.1 * 0.5)), f"{name} was not decayed"
        else:
            assert torch.equal(p, before[name]), f"{name} should not be decayed"


def test_a_model_without_matrices_gives_one_group():
    groups = param_groups(nn.LayerNorm(4), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay"),
        ({"weight_decay": 0.1, "params": []}, ValueError, "params"),
        ({"weight_decay": 0.1, "decay_embeddings": 1}, TypeError, "decay_embeddings"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        param_groups(TinyLM(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model"):
        split_decay([torch.zeros(2, 2)])
