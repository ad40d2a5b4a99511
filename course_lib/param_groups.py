"""Which parameters to decay, and the optimizer parameter groups that say so.

Weight decay pulls weights towards zero. That is a sensible prior for the matrices of
linear and convolutional layers, whose scale the next layer can absorb, but not for:

- **biases**, which shift activations and have no scale to regularise;
- **normalisation gains and shifts** (LayerNorm, BatchNorm, GroupNorm, RMSNorm): decaying a
  gain towards 0 fights the normalisation itself.

**Embeddings** are where codebases differ. minGPT (``karpathy/minGPT``, ``mingpt/model.py``,
``configure_optimizers``) decays only ``nn.Linear`` weights, with ``nn.LayerNorm`` and
``nn.Embedding`` weights on a blacklist. nanoGPT (``karpathy/nanoGPT``, ``model.py``,
``configure_optimizers``) decays every tensor with two or more dimensions, embeddings
included. Hugging Face's ``Trainer`` (``get_decay_parameter_names``) leaves out only
``nn.LayerNorm`` parameters and names that contain "bias" (and, in recent versions, norm
layers matched by name), so it decays embeddings too. The argument for leaving them out:
a row gets a gradient only when its token occurs, but decoupled decay shrinks every row at
every step.

:func:`split_decay` decays tensors with two or more dimensions outside normalisation layers
and, by default, leaves embeddings out, as minGPT does; ``decay_embeddings=True`` decays
them, which is nanoGPT's rule (``p.dim() >= 2``) on models whose normalisation layers hold
only 1-d tensors. :func:`param_groups` turns the split into the two groups a
``torch.optim`` optimizer takes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

#: Module types whose parameters are never decayed (normalisation layers).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
#: Module types whose weights are embeddings: not decayed by default (minGPT's rule), decayed
#: with ``decay_embeddings=True`` (nanoGPT's and the Hugging Face Trainer's).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def split_decay(model: nn.Module, *, decay_embeddings: bool = False) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters to decay and not to decay: ``(decay, no_decay)``.

    A parameter is **not** decayed if it has fewer than 2 dimensions (biases, gains, scalars),
    belongs to a normalisation layer (:data:`NORM_TYPES`), or is an embedding's weight
    (:data:`EMBEDDING_TYPES`) and ``decay_embeddings`` is False (the default, minGPT's
    choice; ``True`` decays embeddings, as nanoGPT and the Hugging Face Trainer do). A
    parameter shared by several modules (tied input and output embeddings) is listed once,
    under its first name, and is not decayed if any module that holds it says so.
    Parameters with ``requires_grad=False`` are left out.
    """
    _check_model(model)
    if not isinstance(decay_embeddings, bool):
        raise TypeError(f"decay_embeddings must be a bool, got {type(decay_embeddings).__name__}")
    no_decay_ids: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        is_embedding = isinstance(module, EMBEDDING_TYPES) and not decay_embeddings
        for param in module.parameters(recurse=False):
            if is_norm or is_embedding or param.ndim < 2:
                no_decay_ids.add(id(param))
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # each shared tensor once, first name
        if param.requires_grad:
            (no_decay if id(param) in no_decay_ids else decay).append(name)
    return decay, no_decay


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_embeddings: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Two parameter groups for a ``torch.optim`` optimizer: decayed, then not decayed.

    ``AdamW(param_groups(model, 0.1), lr=3e-4)`` decays the matrices by 0.1 and leaves
    biases, norms and (unless ``decay_embeddings=True``) embeddings alone.
    ``group_options`` (``lr=...``, for instance) go into both groups. Each group also records
    ``"param_names"`` for inspection. A group with no parameters is left out.
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a real number, got {type(weight_decay).__name__}")
    if not weight_decay >= 0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (expected >= 0)")
    for reserved in ("params", "weight_decay", "param_names"):
        if reserved in group_options:
            raise ValueError(f"Invalid group option {reserved!r}: param_groups sets it itself")
    decay, no_decay = split_decay(model, decay_embeddings=decay_embeddings)
    named: dict[str, Tensor] = dict(model.named_parameters())
    groups = []
    for names, wd in ((decay, float(weight_decay)), (no_decay, 0.0)):
        if names:
            groups.append(
                {
                    "params": [named[n] for n in names],
                    "param_names": list(names),
                    "weight_decay": wd,
                    **group_options,
                }
            )
    return groups
