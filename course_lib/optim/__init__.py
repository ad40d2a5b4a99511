"""Optimizers that match ``torch.optim`` step for step, written to be read.

``adam_step`` is the whole algorithm for one tensor (the version the book shows);
``adam_multi_tensor`` is the same arithmetic over lists of tensors with ``torch._foreach_*``;
``Adam`` and ``AdamW`` are the ``torch.optim.Optimizer`` subclasses that keep the state and
call one or the other.
"""

from course_lib.optim.adam import Adam, AdamW
from course_lib.optim.functional import adam_multi_tensor, adam_step

__all__ = ["Adam", "AdamW", "adam_multi_tensor", "adam_step"]
