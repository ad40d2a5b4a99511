"""course_lib: the tested library behind the course on training neural networks with Adam.

One module per idea the chapters teach:

- :mod:`course_lib.runtime`: device, problem scale, threads and seeds, chosen in one place.
- :mod:`course_lib.seeds`, :mod:`course_lib.sweeps`, :mod:`course_lib.claims`: experiments
  run over seeds with their spread, optima that must lie inside their grid, and the
  chapters' sentences checked against their data.
- :mod:`course_lib.optim`: Adam and AdamW that match ``torch.optim``, with a readable core;
  8-bit AdamW (with a compiled fast path), a compiled fused AdamW, schedule-free AdamW.
- :mod:`course_lib.adam_analysis`: what Adam's update does, step by step, on toy gradients.
- :mod:`course_lib.adam_variance`: RAdam's variance rectification and GI-Adam (Warmup).
- :mod:`course_lib.curvature`: Hessian-vector products and sharpness by power iteration.
- :mod:`course_lib.warmup_map`, :mod:`course_lib.update_size`: the warmup stability map
  (stable, catapult, divergent) and the size of updates relative to the weights.
- :mod:`course_lib.schedules`, :mod:`course_lib.schedule_explorer`,
  :mod:`course_lib.lr_range_test`: learning-rate schedules and how to choose them;
  :mod:`course_lib.cooldown`, :mod:`course_lib.averaging`: cooldowns branched from one
  constant-rate run, and averages of the weights.
- :mod:`course_lib.batch_scaling`, :mod:`course_lib.noise_scale`,
  :mod:`course_lib.accumulation`, :mod:`course_lib.distributed`: batch-size scaling and
  data-parallel training.
- :mod:`course_lib.param_groups`, :mod:`course_lib.weight_decay`, :mod:`course_lib.memory`:
  weight-decay groups, learning rate x weight decay grids and timescales, optimizer memory.
- :mod:`course_lib.data`, :mod:`course_lib.models`, :mod:`course_lib.transformer`,
  :mod:`course_lib.train`: small problems, small models and a training loop.
- :mod:`course_lib.plotting`: the course's figure style.
"""

__version__ = "0.1.0"
