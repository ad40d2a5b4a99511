"""course_lib: the tested library behind the course on training neural networks with Adam.

One module per idea the chapters teach:

- :mod:`course_lib.runtime`: device, problem scale and seeds, chosen in one place.
- :mod:`course_lib.optim`: Adam and AdamW that match ``torch.optim``, with a readable core.
- :mod:`course_lib.adam_analysis`: what Adam's update does, step by step, on toy gradients.
- :mod:`course_lib.data`, :mod:`course_lib.models`, :mod:`course_lib.train`: small problems,
  small models and a training loop for the chapters' experiments.
- :mod:`course_lib.plotting`: the course's figure style.
"""

__version__ = "0.1.0"
