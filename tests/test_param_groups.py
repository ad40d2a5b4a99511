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


class GPTLike(nn.Module):
    """Token and position embeddings, a pre-norm block and an untied head, as in minGPT."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(16, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)


def test_decay_embeddings_true_is_nanogpts_rule():
    """nanoGPT's configure_optimizers: decay exactly the tensors with p.dim() >= 2."""
    model = GPTLike()
    decay, no_decay = split_decay(model, decay_embeddings=True)
    named = dict(model.named_parameters())
    assert decay == [n for n, p in named.items() if p.dim() >= 2]
    assert no_decay == [n for n, p in named.items() if p.dim() < 2]


def test_default_is_mingpts_rule():
    """minGPT's configure_optimizers: decay nn.Linear weights; LayerNorm and Embedding
    weights and every bias are not decayed."""
    model = GPTLike()
    decay, no_decay = split_decay(model)
    linear_weights = [
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    assert decay == linear_weights
    assert {"tok_emb.weight", "pos_emb.weight"} <= set(no_decay)


def test_hf_trainer_rule_is_decay_embeddings_on_a_gpt_like_model():
    """The Hugging Face Trainer decays every non-bias, non-LayerNorm parameter, embeddings
    included: on a model without bare 1-d parameters that is decay_embeddings=True."""
    model = GPTLike()
    hf_decay = [
        f"{mn}.{pn}" if mn else pn
        for mn, m in model.named_modules()
        if not isinstance(m, nn.LayerNorm)
        for pn, _ in m.named_parameters(recurse=False)
        if "bias" not in pn
    ]
    decay, _ = split_decay(model, decay_embeddings=True)
    assert sorted(decay) == sorted(hf_decay)
