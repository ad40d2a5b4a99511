"""The small Transformer and its synthetic tasks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.curvature import hessian_vector_product
from course_lib.data import minibatches
from course_lib.transformer import (
    Block,
    SelfAttention,
    Transformer,
    sequence_accuracy,
    sequence_loss,
    sequence_task,
)

# --- the tasks ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 20),
    length=st.integers(1, 12),
    vocab=st.integers(2, 30),
    seed=st.integers(0, 2**16),
)
def test_tasks_produce_their_targets(n, length, vocab, seed):
    for task in ("reverse", "sort", "copy"):
        x, y = sequence_task(
            n, length, vocab, task=task, generator=torch.Generator().manual_seed(seed)
        )
        assert x.shape == y.shape == (n, length) and x.dtype == y.dtype == torch.int64
        assert 0 <= x.min() and x.max() < vocab
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            if task == "reverse":
                assert row_y == row_x[::-1]
            elif task == "sort":
                assert row_y == sorted(row_x)
            else:
                assert row_y == row_x


def test_tasks_are_reproducible_from_the_generator():
    a = sequence_task(8, 6, 10, generator=torch.Generator().manual_seed(3))
    b = sequence_task(8, 6, 10, generator=torch.Generator().manual_seed(3))
    c = sequence_task(8, 6, 10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"seq_len": -1}, "seq_len"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"task": "shuffle"}, "task"),
    ],
)
def test_task_validation(kwargs, match):
    args = {"num_samples": 4, "seq_len": 5, "vocab_size": 6} | kwargs
    with pytest.raises(ValueError, match=match):
        sequence_task(**args)


def test_sequence_loss_and_accuracy():
    logits = torch.randn(3, 4, 5)
    targets = torch.randint(5, (3, 4))
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(sequence_loss(logits, targets), manual)
    perfect = torch.nn.functional.one_hot(targets, 5).float() * 10
    assert sequence_accuracy(perfect, targets) == 1.0
    assert sequence_loss(torch.zeros(2, 3, 7), torch.zeros(2, 3, dtype=torch.long)).item() == (
        pytest.approx(math.log(7))
    )
    with pytest.raises(ValueError, match="shapes"):
        sequence_loss(logits, targets[:, :2])


# --- the model -------------------------------------------------------------------------


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = SelfAttention(16, 4)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.qkv.weight)
        reference.in_proj_bias.copy_(ours.qkv.bias)
        reference.out_proj.weight.copy_(ours.out.weight)
        reference.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 7, 16)
    expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_post_ln_blocks_end_normalised_and_pre_ln_blocks_do_not():
    torch.manual_seed(1)
    x = torch.randn(4, 6, 16) * 3 + 1
    post = Block(16, 2, 32, "post")(x)
    pre = Block(16, 2, 32, "pre")(x)
    torch.testing.assert_close(post.mean(-1), torch.zeros(4, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(post.var(-1, unbiased=False), torch.ones(4, 6), atol=1e-3, rtol=0)
    assert pre.var(-1, unbiased=False).mean() > 2  # the residual stream keeps x's scale


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_blocks_put_the_norms_where_their_layouts_say(norm):
    """Post-LN (Vaswani et al.): normalise after each residual addition. Pre-LN (Xiong et al.):
    normalise each sub-layer's input and leave the residual stream alone."""
    torch.manual_seed(6)
    block = Block(8, 2, 16, norm)
    with torch.no_grad():  # make the norms' affine parts matter
        for ln in (block.ln1, block.ln2):
            ln.weight.uniform_(0.5, 2.0)
            ln.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 5, 8)
    if norm == "post":
        h = block.ln1(x + block.attn(x))
        expected = block.ln2(h + block.mlp(h))
    else:
        h = x + block.attn(block.ln1(x))
        expected = h + block.mlp(block.ln2(h))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_transformer_shapes_and_determinism(norm):
    torch.manual_seed(2)
    model = Transformer(11, 9, d_model=16, num_heads=2, num_layers=2, norm=norm)
    tokens = torch.randint(11, (5, 9))
    logits = model(tokens)
    assert logits.shape == (5, 9, 11)
    assert model(tokens[:, :4]).shape == (5, 4, 11)
    torch.manual_seed(2)
    again = Transformer(11, 9, d_model=16, num_heads=2, num_layers=2, norm=norm)
    torch.testing.assert_close(again(tokens), logits, rtol=0, atol=0)
    assert isinstance(model.final_norm, torch.nn.LayerNorm) == (norm == "pre")


def test_every_output_depends_on_the_whole_sequence():
    """No causal mask: changing the last token changes the logits at the first position."""
    torch.manual_seed(3)
    model = Transformer(10, 6, d_model=16, num_heads=2, num_layers=1)
    tokens = torch.randint(10, (1, 6))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 10
    assert not torch.allclose(model(tokens)[0, 0], model(changed)[0, 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 3}, "num_heads"),
        ({"norm": "sandwich"}, "norm"),
        ({"d_model": 0}, "d_model"),
        ({"num_layers": 0}, "num_layers"),
    ],
)
def test_model_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(10, 8, **({"d_model": 16} | kwargs))


def test_too_long_input_is_rejected():
    model = Transformer(10, 4, d_model=8, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_hessian_vector_products_through_the_model_match_finite_differences():
    """Attention is written out so that it can be differentiated twice."""
    torch.manual_seed(4)
    model = Transformer(7, 5, d_model=8, num_heads=2, num_layers=2).double()
    x, y = sequence_task(6, 5, 7, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    hvp = hessian_vector_product(sequence_loss(model(x), y), params)
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    v /= v.norm()

    def flat_grad():
        grads = torch.autograd.grad(sequence_loss(model(x), y), params)
        return torch.cat([g.reshape(-1) for g in grads])

    h = 1e-5
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(
            torch.nn.utils.parameters_to_vector(params) + h * v, params
        )
    plus = flat_grad()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(
            torch.nn.utils.parameters_to_vector(params) - 2 * h * v, params
        )
    minus = flat_grad()
    torch.testing.assert_close(hvp(v), (plus - minus) / (2 * h), rtol=1e-4, atol=1e-6)


@pytest.fixture
def one_thread():
    """A model this small runs fastest on one thread, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learns_to_reverse_with_adam(one_thread):
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(5)
    x, y = sequence_task(2048, 6, 8, task="reverse", generator=generator)
    model = Transformer(8, 6, d_model=32, num_heads=4, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = minibatches(x, y, 64, generator=generator)
    for _ in range(150):
        xb, yb = next(batches)
        optimizer.zero_grad()
        sequence_loss(model(xb), yb).backward()
        optimizer.step()
    test_x, test_y = sequence_task(256, 6, 8, task="reverse", generator=generator)
    with torch.no_grad():
        assert sequence_accuracy(model(test_x), test_y) > 0.95
