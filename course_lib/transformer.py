"""A small Transformer and a synthetic sequence task, for experiments that need warmup.

The Warmup chapter needs a model that *fails* without warmup at learning rates that train
well with it. Post-LN Transformers, the original layout of Vaswani et al. (2017) with the
layer norm after each residual addition, are the classic case: Xiong et al. (2020, "On Layer
Normalization in the Transformer Architecture") show that their gradients near the output are
large at initialisation, so the first full-size Adam steps can wreck the model. The same
class builds the Pre-LN layout (norm before each sub-layer) for comparison.

The task is generated in code, never downloaded: sequences of random tokens, and as the
target the same tokens reversed (or sorted, or copied). Every output position must attend to
the right input position, which is what attention is for.

Attention is written out (``softmax(q k^T / sqrt(d)) v``) rather than calling
``torch.nn.functional.scaled_dot_product_attention``: the fused kernels that function picks
on a GPU cannot be differentiated twice, and :mod:`course_lib.curvature` needs
Hessian-vector products (a double backward) through the whole model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib._checks import check_positive_int

TASKS = ("reverse", "sort", "copy")
NORM_POSITIONS = ("post", "pre")


def sequence_task(
    num_samples: int,
    seq_len: int,
    vocab_size: int,
    *,
    task: str = "reverse",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random token sequences ``x`` and their targets ``y``, both ``(num_samples, seq_len)`` int64.

    Tokens are drawn uniformly from ``0 .. vocab_size - 1``. ``task`` picks the target:
    ``"reverse"`` (``y[:, i] = x[:, seq_len - 1 - i]``), ``"sort"`` (ascending) or
    ``"copy"`` (``y = x``). A model that has learnt nothing predicts each token with
    probability ``1 / vocab_size``, a cross-entropy of ``log(vocab_size)``.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("seq_len", seq_len)
    check_positive_int("vocab_size", vocab_size)
    if vocab_size < 2:
        raise ValueError(f"Invalid vocab_size: {vocab_size} (expected at least 2 tokens)")
    if task not in TASKS:
        raise ValueError(f"Invalid task: {task!r} (expected one of {', '.join(TASKS)})")
    x = torch.randint(vocab_size, (num_samples, seq_len), generator=generator)
    if task == "reverse":
        y = x.flip(1)
    elif task == "sort":
        y = x.sort(dim=1).values
    else:
        y = x.clone()
    return x, y


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position: ``logits`` ``(B, L, V)``, ``targets`` ``(B, L)``.

    The ``loss_fn`` to hand to :func:`course_lib.train.train` for :class:`Transformer`.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"Invalid shapes: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
            "(expected (B, L, V) and (B, L))"
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sequence_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Fraction of positions where the most likely token is the target."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"Invalid shapes: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
            "(expected (B, L, V) and (B, L))"
        )
    return (logits.argmax(-1) == targets).float().mean().item()


class SelfAttention(nn.Module):
    """Multi-head self-attention over the whole sequence (no mask), written out."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"Invalid num_heads: {num_heads} (must divide d_model={d_model} evenly)"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        head = width // self.num_heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, L, head)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        return self.out(mixed)


class Block(nn.Module):
    """One Transformer layer: attention then a ReLU MLP, each inside a residual connection.

    ``norm="post"``: ``x = LN(x + Attn(x)); x = LN(x + MLP(x))`` (Vaswani et al., 2017).
    ``norm="pre"``: ``x = x + Attn(LN(x)); x = x + MLP(LN(x))`` (Xiong et al., 2020).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, norm: str) -> None:
        super().__init__()
        self.norm = norm
        self.attn = SelfAttention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "post":
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A small Transformer encoder that maps a token sequence to per-position logits.

    Token and learned position embeddings, ``num_layers`` :class:`Block` layers, and a linear
    read-out to ``vocab_size`` logits at every position (Pre-LN adds the final layer norm that
    layout needs). ``norm`` is ``"post"`` (the default: the layout that needs warmup) or
    ``"pre"``. Weights use PyTorch's default initialisation; embeddings are N(0, 1).
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        *,
        d_model: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        d_ff: int | None = None,
        norm: str = "post",
    ) -> None:
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("seq_len", seq_len)
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_layers", num_layers)
        d_ff = 4 * d_model if d_ff is None else d_ff
        check_positive_int("d_ff", d_ff)
        if norm not in NORM_POSITIONS:
            raise ValueError(f"Invalid norm: {norm!r} (expected 'post' or 'pre')")
        self.seq_len = seq_len
        self.norm = norm
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.randn(seq_len, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, num_heads, d_ff, norm) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.readout = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens`` ``(B, L)`` int64, ``L <= seq_len`` -> logits ``(B, L, vocab_size)``."""
        if tokens.dim() != 2:
            raise ValueError(f"Invalid tokens shape {tuple(tokens.shape)} (expected (B, L))")
        if tokens.shape[1] > self.seq_len:
            raise ValueError(
                f"Sequence of length {tokens.shape[1]} is longer than seq_len={self.seq_len}"
            )
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.readout(self.final_norm(x))
