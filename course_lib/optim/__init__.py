"""Optimizers that match ``torch.optim`` step for step, written to be read.

``adam_step`` is the whole algorithm for one tensor (the version the book shows);
``adam_multi_tensor`` is the same arithmetic over lists of tensors with ``torch._foreach_*``;
``Adam`` and ``AdamW`` are the ``torch.optim.Optimizer`` subclasses that keep the state and
call one or the other. ``AdamW8bit`` keeps block-wise 8-bit moments; ``FusedAdamW`` runs
the whole per-element update as one compiled kernel (``torch.compile``);
``ScheduleFreeAdamW`` needs no learning-rate schedule (Defazio et al., 2024).
"""

from course_lib.optim.adam import Adam, AdamW
from course_lib.optim.adamw8bit import AdamW8bit
from course_lib.optim.fast import FusedAdamW, adamw_fused_update
from course_lib.optim.functional import adam_multi_tensor, adam_step
from course_lib.optim.schedule_free import ScheduleFreeAdamW

__all__ = [
    "Adam",
    "AdamW",
    "AdamW8bit",
    "FusedAdamW",
    "ScheduleFreeAdamW",
    "adam_multi_tensor",
    "adam_step",
    "adamw_fused_update",
]
