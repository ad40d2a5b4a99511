# ruff: noqa
# fmt: off
# Generated from book/memory.md by `python -m benchmarks.gpu_check --prepare` (jupytext,
# percent format) for `make gpu-check`; do not edit: edit the chapter and run make gpu-check.
# ---
# jupyter:
#   jupytext:
#     default_lexer: ipython3
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Optimizer memory and speed
#
# Adam keeps two numbers for every parameter, and every step reads and rewrites all of them.
# This chapter counts what that costs: how many bytes per parameter training with AdamW needs,
# how 8-bit optimizer states {cite:p}`dettmers2022optimizers` cut the optimizer's share by a
# factor of four, and why the speed of an AdamW step is set by memory bandwidth rather than by
# arithmetic. The speed numbers come from the benchmark in `benchmarks/`, recorded as JSON and
# loaded here; the other numbers are computed by the cells.

# %%
import json
import textwrap
from pathlib import Path

import torch

import course_lib
from course_lib import runtime
from course_lib.memory import (
    RECIPES,
    adamw_step_traffic,
    format_bytes,
    optimizer_state_bytes,
    state_bytes_per_parameter,
    training_memory,
)
from course_lib.optim import AdamW
from course_lib.optim.adamw8bit import (
    AdamW8bit,
    dequantize_blockwise,
    dynamic_map,
    quantize_blockwise,
)
from course_lib.plotting import subplots

device = runtime.setup(seed=0)

# %% [markdown]
# ## Bytes per parameter
#
# Training keeps, for each parameter, the weight itself, its gradient, and the optimizer's
# state; with mixed precision also a float32 *master* copy of the weight, which the optimizer
# updates and from which the bf16 weights are rounded {cite:p}`micikevicius2018mixed`. AdamW's
# state is its two moments. `course_lib.memory` writes the accounting down once:
#
# ```{literalinclude} ../course_lib/memory.py
# :pyobject: recipes
# ```
#
# The cell prints each recipe per parameter and for a model of 7 billion parameters.
# Activations are not counted: they depend on the batch and the model, not on the optimizer.

# %%
n = 7_000_000_000
print(f"{'recipe':<16} {'bytes per':>9} {'7B model':>10} {'of which':>10}")
print(f"{'':<16} {'parameter':>9} {'':>10} {'optimizer':>10}")
for key, recipe in RECIPES.items():
    memory = training_memory(n, key)
    print(f"{key:<16} {recipe.total:>9.3f} {format_bytes(memory['total']):>10} "
          f"{format_bytes(memory['optimizer_state']):>10}")
print()
for key, recipe in RECIPES.items():
    print(textwrap.fill(f"{key}: {recipe.name}", 76, subsequent_indent="    "))

# %% [markdown]
# Mixed precision does not save memory on the weights of the optimizer: bf16 weights and
# gradients save 4 bytes, and the fp32 master copy spends them again, 16 bytes per parameter
# either way (its gain is speed, and activations). Half of those 16 bytes are AdamW's moments,
# which is why the optimizer state is the first thing to shrink.
#
# ## 8-bit AdamW
#
# `course_lib.optim.adamw8bit.AdamW8bit` stores $m$ and $v$ as one byte per element. The
# update itself is unchanged: for each tensor, the step *dequantizes* the two moments to
# float32, applies `adam_step` (the same function as `AdamW`), and *quantizes* them back.
#
# ```{literalinclude} ../course_lib/optim/adamw8bit.py
# :pyobject: AdamW8bit._update
# ```
#
# Two choices of {cite:t}`dettmers2022optimizers` make one byte enough. **Block-wise scaling**: each block of
# 2048 elements is divided by its own largest magnitude (absmax), so one outlier coarsens only
# its block. **A non-linear map**: the 256 codes are not evenly spaced in $[-1, 1]$; the
# *dynamic tree* map covers the seven decades from $10^{-7}$ to 1, halving the codes from one
# decade to the next: per sign 64 codes on $[0.1, 1]$, 32 on the decade below, then 16, 8, 4, 2
# and 1. Values near their block's largest keep a relative precision of a few per cent, and
# values millions of times smaller are still told apart from zero, coarsely. $v$ is never
# negative and uses an unsigned map that spends the sign bit on resolution (128, 64, ..., 2
# codes per decade). The cell draws both maps.

# %% mystnb={"image": {"width": "100%", "alt": "The 256 values of three 8-bit quantization maps against their code, as a fraction of the block's absolute maximum: the signed and the unsigned dynamic tree maps as dots and the linear map as a grey line."}}
signed, unsigned = dynamic_map(signed=True), dynamic_map(signed=False)
linear = torch.linspace(-1, 1, 256)
fig, ax = subplots()
ax.plot(range(256), signed, ".", ms=3, label="dynamic tree map, signed (for m)")
ax.plot(range(256), unsigned, ".", ms=3, label="dynamic tree map, unsigned (for v)")
ax.plot(range(256), linear, "-", lw=1, color="gray", label="linear map")
ax.set(xlabel="code (0 to 255)", ylabel="value / block absmax",
       title="Three 8-bit quantization maps")
ax.legend();
print("smallest positive value of each map:")
print(f"    signed {signed[signed > 0].min():.2e}, unsigned {unsigned[unsigned > 0].min():.2e}, "
      f"linear {linear[linear > 0].min():.2e}")

# %% [markdown]
# What does this buy on Adam's states? The cell builds a realistic pair: gradients whose scale
# varies over three decades inside every block, their mean ($m$-like, signed) and mean square
# ($v$-like, spanning six decades). It quantizes each with the dynamic maps and with a linear
# map, and reports the relative error and the fraction of non-zero values that come back as 0.

# %%
gen = torch.Generator().manual_seed(0)
scales = torch.logspace(-3, 0, 65536)[torch.randperm(65536, generator=gen)]
grads = torch.randn(32, 65536, generator=gen) * scales
m_like, v_like = grads.mean(0) * 0.1, (grads**2).mean(0)
print(f"{'state':<7} {'map':<14} {'relative L1 error':>18} {'non-zero -> 0':>14}")
for name, x, maps in (
    ("m-like", m_like, {"dynamic tree": signed, "linear": linear}),
    ("v-like", v_like, {"dynamic tree": unsigned, "linear": torch.linspace(0, 1, 256)}),
):
    for map_name, qmap in maps.items():
        y = dequantize_blockwise(*quantize_blockwise(x, qmap), qmap)
        error = ((y - x).abs().sum() / x.abs().sum()).item()
        zeroed = ((y == 0) & (x != 0)).float().mean().item()
        print(f"{name:<7} {map_name:<14} {error:>18.4f} {zeroed:>14.1%}")

# %% [markdown]
# The dynamic map is the more accurate of the two on both states, and on $v$ the linear map
# does something worse than being inaccurate: it rounds a large share of the small second
# moments to zero (last column). Adam divides by $\sqrt{v} + \epsilon$, so a
# coordinate whose $v$ reads 0 while its $m$ does not takes a step of $\eta\, m / \epsilon$,
# thousands of learning rates. The dynamic map, too, loses values more than about seven decades
# below its block's largest; `AdamW8bit` therefore stores a positive $v$ that would round to 0 as the
# smallest positive code instead, which can only shorten a step (the zero-point problem
# {cite:p}`li2023memory`; `tests/test_adamw8bit.py` shows the step sizes with and without it).
#
# ### Measured state memory
#
# The state is measured, not computed: `optimizer_state_bytes` adds `numel × element_size` over
# every tensor in `optimizer.state`, codes, scales and step counters included. Tensors of fewer
# than 4096 elements (biases) keep float32 states, as in the paper's implementation.

# %%
model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
for make in (lambda p: AdamW(p), lambda p: AdamW8bit(p), lambda p: AdamW8bit(p, block_size=256)):
    optimizer = make(model.parameters())
    model(torch.randn(8, 512)).square().mean().backward()
    optimizer.step()
    name = type(optimizer).__name__ + (f" (block {optimizer.param_groups[0]['block_size']})"
                                       if isinstance(optimizer, AdamW8bit) else "")
    print(f"{name:<22} state {format_bytes(optimizer_state_bytes(optimizer)):>8} = "
          f"{state_bytes_per_parameter(optimizer):.4f} bytes per parameter")
    model.zero_grad()

# %% [markdown]
# ### Does it train as well?
#
# The course model of [the Adam chapter](adam.md), trained with fp32 AdamW and with `AdamW8bit` from three
# seeds each; `min_8bit_size=0` quantizes every tensor, biases included, to make the test hard.
# A third row trains fp32 AdamW at 1.5 times the learning rate, to see which way this model
# responds to larger steps in this budget. The cell prints each run's final loss (the mean over
# the last 10% of steps), the mean and the spread (largest minus smallest) over seeds, and plots
# the curves.

# %% mystnb={"image": {"width": "100%", "alt": "Training-loss curves over the steps, moving average of 20 steps on a logarithmic axis, of fp32 AdamW, of 8-bit AdamW and of fp32 AdamW at 1.5 times the learning rate, three seeds each."}}
from course_lib.claims import Claims
from course_lib.data import badly_scaled_teacher, minibatches
from course_lib.models import MLP
from course_lib.train import train

claims = Claims("memory")
x, y = badly_scaled_teacher(4096, 16, generator=torch.Generator().manual_seed(1))
steps, seeds, lr = runtime.scaled(small=400, full=3000), range(3), 3e-3
configs = {
    "fp32 AdamW": lambda p: AdamW(p, lr=lr),
    "8-bit AdamW": lambda p: AdamW8bit(p, lr=lr, min_8bit_size=0),
    "fp32, 1.5x lr": lambda p: AdamW(p, lr=1.5 * lr),
}
runs = {}
for name, make in configs.items():
    for seed in seeds:
        runtime.seed_everything(seed)
        model = MLP(16, 1, hidden=128).to(device)
        batches = minibatches(x, y, 64, generator=torch.Generator().manual_seed(seed))
        runs[name, seed] = train(model, make(model.parameters()), batches, steps, device=device)

finals = {name: [runs[name, s].final_loss for s in seeds] for name in configs}
mean = {name: sum(v) / len(v) for name, v in finals.items()}
spread = {name: max(v) - min(v) for name, v in finals.items()}
print(f"{'':<14} {'final loss, seeds 0, 1, 2':^23} {'mean':>7} {'spread':>7}")
for name, values in finals.items():
    print(f"{name:<14} " + " ".join(f"{v:>7.4f}" for v in values)
          + f" {mean[name]:>7.4f} {spread[name]:>7.4f}")

noise = max(spread["fp32 AdamW"], spread["8-bit AdamW"])
gap = mean["8-bit AdamW"] - mean["fp32 AdamW"]
gain = mean["fp32 AdamW"] - mean["fp32, 1.5x lr"]
print(f"8-bit mean - fp32 mean = {gap:+.4f}; larger seed spread {noise:.4f}; "
      f"fp32 gains {gain:+.4f} from 1.5x lr")
assert all(runs["8-bit AdamW", s].final_loss < 0.5 * runs["8-bit AdamW", s].losses[0]
           for s in seeds), "8-bit AdamW did not halve its first loss: it did not train"
claims.number("gap", abs(gap), ".4f")
claims.number("noise", noise, ".4f")
claims.number("lr_gain", abs(gain), ".4f")
claims.text("eightbit_verdict", "lower than" if gap < -noise else
            "higher than" if gap > noise else "within the seed spread of")
claims.either("lr_verdict", gain > noise,
              "ends lower by more than the seed spread: this budget rewards larger steps",
              "does not end lower by more than the seed spread")
claims.check("not_worse", gap <= noise, "8-bit AdamW trains this model no worse than fp32 AdamW",
             evidence=f"gap {gap:+.4f}, spread {noise:.4f}")

fig, ax = subplots()
for (name, seed), history in runs.items():
    losses = torch.tensor(history.losses)
    smooth = torch.nn.functional.avg_pool1d(losses[None, None], 20, stride=1)[0, 0]
    ax.plot(range(20, len(losses) + 1), smooth, color=f"C{list(configs).index(name)}",
            alpha=0.8, label=name if seed == 0 else None)
ax.set(yscale="log", xlabel="step", ylabel="training loss (MSE, moving average of 20)",
       title="fp32 and 8-bit AdamW, three seeds each")
ax.legend();

# %% [markdown]
# The 8-bit runs end {glue:text}`eightbit_verdict` the fp32 runs (difference of the means
# {glue:text}`gap`, largest seed spread {glue:text}`noise`): {glue:text}`not_worse`. Ending
# *lower* is not a gift of quantization, and not a different update either:
# `tests/test_adamw8bit.py` checks that `AdamW8bit` gives, bit for bit, the weights of fp32
# AdamW whose $m$ and $v$ are replaced by their 8-bit round trip after every step, so the
# $\epsilon$, the bias corrections and the order of operations are AdamW's. What differs is
# the rounding of the moments, and it is $v$ that matters: in a block, a $v$ far below the
# block's largest falls in the coarse lower decades of the map, where it can be off by tens
# of per cent, and a $v$ that grows or decays by a tenth of a per cent per step ($1-\beta_2$)
# can round back to the same code and lag behind the true second moment. The step
# $\eta\, m/\sqrt{v}$ of those coordinates, the ones with small gradients (on this problem the
# weights of its small-scale inputs), is then larger or smaller than AdamW's by as much. Whether
# that helps depends on the learning rate: fp32 AdamW at 1.5 times the rate
# {glue:text}`lr_verdict` (by {glue:text}`lr_gain`). Where the base rate is below the best one
# for the budget, larger steps on neglected coordinates lower the loss; at a learning rate
# tuned for each, the two should be compared again before reading anything into the sign.
#
# ## Why an AdamW step is memory-bound
#
# For each float32 parameter one AdamW step reads four numbers (the weight, its gradient, $m$,
# $v$) and writes three (the weight, $m$, $v$): 28 bytes, for about a dozen floating-point
# operations. At roughly half an operation per byte, any processor waits on memory long before
# it runs out of arithmetic, so the fastest possible step is the one that moves those 28 bytes
# once.

# %%
print("bytes one AdamW step moves, at least")
print(f"{'parameters':>10} {'fp32 states':>12} {'8-bit states':>13}")
for n_params in (1_000_000_000, 7_000_000_000):
    print(f"{n_params / 1e9:>9.0f}B {format_bytes(adamw_step_traffic(n_params)):>12} "
          f"{format_bytes(adamw_step_traffic(n_params, state_bytes=1)):>13}")

# %% [markdown]
# There are three ways to write the step:
#
# - **a loop over tensors** (`adam_step`, torch's `foreach=False`): each line of the algorithm
#   is a separate pass over memory, about ten in all, and one Python call per tensor and line;
# - **multi-tensor** (`adam_multi_tensor`, `foreach=True`): the same passes, but one call per
#   line for all tensors together, which removes most of the per-tensor overhead (on a GPU, the
#   kernel launches);
# - **fused**: one pass that loads an element's four values, computes, and stores three.
#   PyTorch has a hand-written kernel (`fused=True`); `course_lib` gets one by compiling the
#   per-element arithmetic with `torch.compile`:
#
# ```{literalinclude} ../course_lib/optim/fast.py
# :pyobject: adamw_fused_update
# ```
#
# The learning rate and the bias corrections change at every step, so they are passed in as
# tensors: the compiled kernel is reused, and it does not evaluate $\beta^t$ for every element.
#
# ### Measured
#
# `python -m benchmarks.adamw_step` times the six implementations side by side in one process,
# on the same parameters: each round runs every implementation once, in rotating order, next to
# a same-size `copy_` that gives the machine's practical bandwidth (8 bytes per element, one
# read and one write). The cell loads the recorded results and says where they were taken.

# %% mystnb={"image": {"width": "100%", "alt": "Two horizontal bar charts, one above the other, for the large and the small benchmark set: the effective bandwidth in GB/s of each of the six AdamW step implementations, course_lib's in one colour and torch's in another, with a dashed line at the bandwidth of a plain copy."}}
results_dir = Path(course_lib.__file__).resolve().parents[1] / "benchmarks" / "results"
bench = json.loads((results_dir / "adamw_step_cpu.json").read_text())
machine = bench["machine"]
print(textwrap.fill(
    f"recorded {machine['date']} on {machine['cpu']} ({machine['cpu_count']} cores, "
    f"{machine['torch_threads']} torch thread), torch {machine['torch']}; load average "
    f"{machine['loadavg_at_start'][0]} at start: "
    f"{'shared, busy' if machine['loaded'] else 'quiet'} machine",
    76))
print(f"median of {bench['config']['rounds']} rounds after "
      f"{bench['config']['warmup']} warm-up rounds\n")
for kind, res in bench["sets"].items():
    ratios = res["ratios"]
    print(f"{kind} set: {res['tensors']} tensors, {res['parameters'] / 1e6:.1f}M parameters")
    print(f"  {'':<28} {'':>8} {'':>6} {'x torch':>8} {'speed-up':>8}")
    print(f"  {'implementation':<28} {'ms/step':>8} {'GB/s':>6} {'fastest':>8} {'vs loop':>8}")
    for name, s in res["implementations"].items():
        print(f"  {name:<28} {s['median_s'] * 1e3:>8.2f} {s['effective_gbps']:>6.2f} "
              f"{ratios['time_over_torch_fastest'][name]:>8.2f} "
              f"{ratios['speedup_over_torch_for_loop'][name]:>8.2f}")
    print(f"  {'copy_ (same bytes model)':<28} {res['copy']['median_s'] * 1e3:>8.2f} "
          f"{res['copy']['gbps']:>6.2f}")
    print(textwrap.fill(
        f"course_lib's fastest ({ratios['course_lib_fastest']}) takes "
        f"{ratios['course_fastest_over_torch_fastest']:.2f}x the time of torch's fastest "
        f"({ratios['torch_fastest']})", 76, initial_indent="  ", subsequent_indent="  ") + "\n")

fig, axes = subplots(nrows=2)
for ax, (kind, res) in zip(axes, bench["sets"].items()):
    names = list(res["implementations"])
    ax.barh(names, [res["implementations"][n]["effective_gbps"] for n in names],
            color=["C0" if n.startswith("course_lib") else "C1" for n in names])
    ax.axvline(res["copy"]["gbps"], color="k", ls="--", label="copy_ bandwidth")
    ax.set(xlabel="effective bandwidth, 28 B x parameters / step time (GB/s)",
           title=f"{kind} set, {res['parameters'] / 1e6:.1f}M parameters")
    ax.legend(loc="lower right")
small_ratio = bench["sets"]["small"]["ratios"]["course_fastest_over_torch_fastest"]
claims.number("small_ratio", small_ratio, ".2f")
claims.either(
    "small_set_verdict", small_ratio > 1,
    "still loses to torch's: the compiled function checks its input tensors in Python before "
    "the kernel runs, which torch's C++ `fused=True` path does not have to do",
    "keeps up with torch's: with that Python work gone, what remains is the same one pass "
    "over memory in both",
)

# %% [markdown]
# On the large set the two fused implementations are several times faster than the loops and
# the multi-tensor paths, and they are the only ones that get near the bandwidth that a plain
# copy reaches: the others make many passes over memory. On a CPU `foreach` gains little over a
# loop (the loop's overhead is small next to passes over 4M-element tensors); its purpose is a
# GPU with hundreds of small tensors, where each kernel launch costs microseconds. The effective
# bandwidth of a fused step can exceed the copy's, because a copy of a large buffer also reads
# each destination line before writing it, so it moves more bytes than the 8 it is credited
# with. On the small set, fixed costs per call weigh more. course_lib keeps its own Python work
# per step small (the step counters of a bucket live in one tensor, each `state["step"]` a view
# of it, so one add advances them all; Inductor's per-input size checks are off, since Dynamo's
# guards check the same). In the recorded run its step takes {glue:text}`small_ratio` times
# the time of torch's fastest on the small set: it {glue:text}`small_set_verdict`.
#
# ### 8-bit states: memory against time
#
# `python -m benchmarks.adamw8bit` measures the other trade-off, side by side in one process:
# the state bytes, exactly, the step time as a ratio to torch's fused fp32 step taken within
# each round, and the first call (state creation, and compilation where there is one). Besides
# the readable `AdamW8bit` it times `AdamW8bit(fast=True)`, the same arithmetic as one pass per
# tensor in a small C kernel (`course_lib/optim/adamw8bit_kernel.py`) that writes bit for bit
# the same codes, scales and weights, and, when they are installed, the 8-bit AdamW of
# bitsandbytes {cite:p}`dettmers2022optimizers` and of torchao.

# %%
bench8 = json.loads((results_dir / "adamw8bit_cpu.json").read_text())
m8 = bench8["machine"]
print(textwrap.fill(
    f"recorded {m8['date']} on {m8['cpu']}, {m8['torch_threads']} torch thread, load "
    f"{m8['loadavg_at_start'][0]} at start and {m8['loadavg_at_end'][0]} at the end; "
    f"{bench8['config']['parameters'] / 1e6:.1f}M parameters in "
    f"{bench8['config']['tensors']} tensors; median of {bench8['config']['rounds']} rounds", 76))
print(f"{'optimizer':<34} {'B/param':>8} {'ms/step':>8} {'x fused':>8} {'1st call s':>10}")
for name, s in bench8["implementations"].items():
    print(f"{name:<34} {s['state_bytes_per_parameter']:>8.3f} {s['median_s'] * 1e3:>8.1f} "
          f"{s['time_over_torch_fused']:>8.2f} {s['first_call_s']:>10.2f}")
for name, why in bench8["skipped"].items():
    print(f"{name}: not measured, {why}")
impl8 = bench8["implementations"]
fast8 = impl8["course_lib AdamW8bit fast=True"]
claims.number("fast_ratio", fast8["time_over_torch_fused"], ".1f")
claims.number("readable_ratio", impl8["course_lib AdamW8bit (readable)"]["time_over_torch_fused"], ".0f")
claims.number("fast_bytes", fast8["state_bytes_per_parameter"], ".3f")
others = [n for n in ("bitsandbytes AdamW8bit", "torchao AdamW8bit") if n in impl8]
claims.either(
    "fast_vs_others",
    all(fast8["time_over_torch_fused"] < impl8[n]["time_over_torch_fused"] for n in others),
    "faster than " + (" and ".join(n.split()[0] for n in others) or "no other 8-bit AdamW measured"),
    "not faster than every other 8-bit AdamW measured",
)

# %% [markdown]
# The state shrinks by the factor the accounting promised. The readable step pays for it in
# time, {glue:text}`readable_ratio` times torch's fused fp32 step: it makes some twenty passes
# over memory per tensor (dequantize, `adam_step`'s ten, quantize with a binary search over
# the 256 codes per element). The fast path, with {glue:text}`fast_bytes` bytes of state per
# parameter, takes {glue:text}`fast_ratio` times the fused fp32 step, {glue:text}`fast_vs_others`.
# It reads each block of codes, gradients and weights once, keeps the block's new moments in
# the CPU's cache between the update and the quantization, and writes weights and codes once:
# about 16 bytes of memory traffic per parameter (weight read and written, gradient read, two
# 1-byte codes read and written, the scales), against 28 for the fp32 step, so at the memory
# limit it could be faster than the fp32 step. What keeps it above is arithmetic, not memory:
# table look-ups for the codes, four divisions per element that the readable path's rounding
# prescribes, and a square root as `torch.sqrt` computes it. On a GPU, bitsandbytes does the
# same in one fused CUDA kernel. The arithmetic is the same `adam_step` throughout.
#
# ## Summary
#
# - fp32 AdamW and bf16 mixed precision with fp32 master weights both take 16 bytes per
#   parameter before activations; half of it is the optimizer's $m$ and $v$.
# - Block-wise 8-bit states with a non-linear map bring the optimizer's share to about
#   2 bytes per parameter, measured, and train the course model no worse than fp32 states;
#   $v$ must never be rounded to zero.
# - An AdamW step moves 28 bytes per fp32 parameter for a dozen operations: it is bound by
#   memory, and the fused step, which moves them once, is the fast one.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
