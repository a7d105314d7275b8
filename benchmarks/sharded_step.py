"""Step time of the sharded train step on 8 simulated CPU devices against one device, same batch.

  python benchmarks/sharded_step.py                  # tiny demo model, 96 px, batch 64: ~6 minutes
  python benchmarks/sharded_step.py --model l0 --res 64 --batch 32 \\
      --variants single,dp8,fsdp2,fsdp8,dp8_nocomm,dp8_zero,single_nodonate,dp8_nodonate \\
      --rounds 5 --steps 1 --warmup 1                # 22M params: ~15 minutes
  python benchmarks/sharded_step.py --variants single,dp8 --dump-hlo /tmp/hlo

Baseline: `single`, the trainer's step (steps.train_step jitted as loop.py does it: in/out
shardings, state donated) on a 1x1 mesh over jax.devices()[:1]. Candidates run the same step on
the same global batch on all 8 devices:

  dp8           mesh data=8 x fsdp=1; batch split 8 ways; params, optimizer state replicated
  fsdp2         mesh data=4 x fsdp=2; params and optimizer state split by sharding.FSDP_RULES
  fsdp8         mesh data=1 x fsdp=8; likewise
  dp8_zero      dp8 with the optimizer state (not the params) split over both axes by the
                FSDP_RULES' dimensions (ZeRO-1: each device updates 1/8 of the moments; the
                collectives line shows what XLA made of the gradient reduction)

Diagnostics (printed with ratios, not judged against the target):

  dp8_nocomm    dp8's per-device programs without the collectives: each device runs the step on
                its own rows alone (shard_map; the replicas drift apart, which timing ignores).
                dp8 / dp8_nocomm is what collectives and partitioning cost; dp8_nocomm / single
                is what simulating 8 devices on shared cores costs (8 programs' fixed per-op
                costs, 8x smaller kernels), which a pod does not pay
  floor8        the single-device step on global batch / 8, run 8 times back to back: the 8
                simulated devices' work without collectives (but also without their concurrency)
  dp8_nodonate, single_nodonate   dp8 / single without donating the state

All variants live in one process started with --xla_force_host_platform_device_count=8, so they
share one XLA:CPU client and the same cores: a sharded step does the single step's FLOPs on the
same cores, plus whatever each device repeats (param-sized work: weight standardisation, the
optimizer update of a replicated state) and the collectives. Variants are timed in alternating
rounds (median), so load from other work on a shared machine hits all of them alike. Besides
wall time the script prints this process's CPU time per step (robust to other load), minor page
faults per step, XLA's temp allocation per device, and the collectives in the compiled HLO.
Ratios are medians of per-round ratios, [25-75%] after them. The script re-runs itself under
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (why: see the comment after the docstring).

Target (issue "The trainer at pod scale"): sharded / single <= 1.1x in wall time.
"""
from __future__ import annotations

import argparse
import os
import sys

# XLA:CPU allocates every execution's temp buffers anew, and glibc serves each allocation over
# 32 MB with a fresh mmap whose pages fault in on first touch. The single-device step's temp
# (177 MB for the demo) pays that every step, while the 8 per-device temps (25 MB) are recycled
# from the heap: left alone, that allocator artifact makes the sharded step look 15-30% faster
# than the single one. glibc's hugetlb tunable (transparent huge pages for malloc) takes the
# faults out of both sides; --system-malloc keeps the plain allocator.
if "--system-malloc" not in sys.argv and "GLIBC_TUNABLES" not in os.environ:
  os.environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
  os.execv(sys.executable, [sys.executable] + sys.argv)
# XLA reads its flags when the backend first initialises: the simulated devices must be asked
# for before anything imports jax.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from configs import demo  # noqa: E402
from sw_zoo import sharding  # noqa: E402
from sw_zoo.models import create_model, partitioning  # noqa: E402
from sw_zoo.train import losses, optimizer, steps  # noqa: E402

# The trainer's own state -> shardings mapping, where this checkout has it.
state_shardings_of = getattr(sharding, "state_shardings", None)

TARGET = 1.1
NUM_TAGS = 65  # the synthetic dataset's vocabulary
# FSDP_RULES' dimension choices, but over both mesh axes: for the ZeRO-1 optimizer state.
ZERO_RULES = tuple((name, sharding.BATCH_AXES if axis == "fsdp" else axis) for name, axis in sharding.FSDP_RULES)


@dataclasses.dataclass(frozen=True)
class Variant:
  mesh: tuple
  params: Any  # logical rules for the params
  opt: Any = None  # rules for the optimizer state's param-shaped leaves; None: as the params
  donate: bool = True
  split: int = 1  # run the global batch as `split` sequential steps on batch / split
  local: bool = False  # each device steps on its own rows alone (shard_map, no collectives)
  judged: bool = True  # counted against the target

  @property
  def num_devices(self) -> int:
    return int(np.prod([s for _, s in self.mesh]))


_ONE = (("data", 1), ("fsdp", 1))
_DP8 = (("data", 8), ("fsdp", 1))
VARIANTS = {
    "single": Variant(_ONE, sharding.DATA_PARALLEL_RULES),
    "dp8": Variant(_DP8, sharding.DATA_PARALLEL_RULES),
    "fsdp2": Variant((("data", 4), ("fsdp", 2)), sharding.FSDP_RULES),
    "fsdp8": Variant((("data", 1), ("fsdp", 8)), sharding.FSDP_RULES),
    "dp8_zero": Variant(_DP8, sharding.DATA_PARALLEL_RULES, opt=ZERO_RULES),
    "floor8": Variant(_ONE, sharding.DATA_PARALLEL_RULES, split=8, judged=False),
    "dp8_nocomm": Variant(_DP8, sharding.DATA_PARALLEL_RULES, local=True, judged=False),
    "dp8_nodonate": Variant(_DP8, sharding.DATA_PARALLEL_RULES, donate=False, judged=False),
    "single_nodonate": Variant(_ONE, sharding.DATA_PARALLEL_RULES, donate=False, judged=False),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "u8": 1, "s8": 1, "pred": 1, "f64": 8, "s64": 8}


def collective_stats(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{op: (count, bytes of results)} over the optimized HLO. Async pairs are counted once (at
  -start); a combined (tuple) collective counts once with all its operands' bytes."""
  stats = {}
  for line in hlo_text.splitlines():
    m = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not m:
      continue
    nbytes = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1)):
      nbytes += _DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    if m.group(3):  # an async -start returns (operands, results): half the bytes are the result
      nbytes //= 2
    count, total = stats.get(m.group(2), (0, 0))
    stats[m.group(2)] = (count + 1, total + nbytes)
  return stats


def _accepted(fn, **kwargs) -> dict[str, Any]:
  """The kwargs `fn` takes: the step and init grew options (EMA, non-finite skipping) over time;
  pass the config's values for those this checkout has, as loop.py does."""
  params = inspect.signature(fn).parameters
  return {k: v for k, v in kwargs.items() if k in params}


def step_options(config) -> dict[str, Any]:
  o = config.optim
  return _accepted(steps.train_step, ema_decay=o.get("ema_decay", 0.0), ema_warmup=o.get("ema_warmup", True),
                   skip_nonfinite=o.get("skip_nonfinite", False))


def state_shardings(abstract_state, model, tx, mesh, variant: Variant, image_size: int):
  """Params (and every param-shaped optimizer / EMA leaf) placed by the variant's rules, the
  optimizer moments by its optimizer rules if it has some; counters and the RNG replicated."""
  repl = sharding.replicated(mesh)
  boxed = partitioning.abstract_params(model, (1, image_size, image_size, 3))

  def place(rules):
    param_sh = sharding.param_shardings(boxed, mesh, rules)
    if state_shardings_of is not None:
      return state_shardings_of(abstract_state, param_sh, mesh)
    # optax.tree_map_params finds the leaves of each optimizer state that mirror the params.
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state, param_sh,
                                   transform_non_params=lambda _: repl)
    return jax.tree.map(lambda _: repl, abstract_state).replace(params=param_sh, opt_state=opt_sh)

  shardings = place(variant.params)
  if variant.opt is not None:
    shardings = shardings.replace(opt_state=place(variant.opt).opt_state)
  return shardings


def build_variant(name: str, config, model, tx, schedule, images: np.ndarray, labels: np.ndarray,
                  dump_dir: str | None) -> tuple[Any, dict[str, Any]]:
  v = VARIANTS[name]
  mesh = sharding.make_mesh(v.mesh, jax.devices()[:v.num_devices])
  init_fn = functools.partial(steps.init_state, model, tx, image_size=config.data.image_size, seed=config.seed,
                              **_accepted(steps.init_state, ema=config.optim.get("ema_decay", 0.0) > 0))
  shardings = state_shardings(jax.eval_shape(init_fn), model, tx, mesh, v, config.data.image_size)
  batch_sh = sharding.batch_sharding(mesh)
  # As loop.py: the state in its shardings, donated; the batch split over both mesh axes. (BCE is
  # the demo's loss; losses.sigmoid_bce is its name in every version of losses.py.)
  step_fn = functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.sigmoid_bce, schedule=schedule,
                              **step_options(config))
  if v.local:
    # Replicated in and out without checking: each device keeps its own (diverging) copy.
    step_fn = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(sharding.BATCH_AXES)), out_specs=(P(), P()),
                            check_vma=False)
  train_fn = jax.jit(step_fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, sharding.replicated(mesh)),
                     donate_argnums=(0,) if v.donate else ())
  state = jax.jit(init_fn, out_shardings=shardings)()
  rows = len(images) // v.split
  batches = [{"image": jax.device_put(images[i * rows:(i + 1) * rows], batch_sh),
              "labels": jax.device_put(labels[i * rows:(i + 1) * rows], batch_sh)} for i in range(v.split)]
  compiled = train_fn.lower(state, batches[0]).compile()
  text = compiled.as_text()
  if dump_dir:
    os.makedirs(dump_dir, exist_ok=True)
    with open(os.path.join(dump_dir, f"{name}.hlo.txt"), "w", encoding="utf-8") as f:
      f.write(text)
  holder = {"state": state}

  def run(n: int):
    stats = None
    for _ in range(n):
      for b in batches:
        holder["state"], stats = compiled(holder["state"], b)
    jax.block_until_ready(stats["loss"])

  mem = compiled.memory_analysis()
  info = {"mesh": dict(mesh.shape), "collectives": collective_stats(text),
          "sharded_leaves": sum(1 for s in jax.tree.leaves(shardings) if not s.is_fully_replicated),
          "temp_mb": getattr(mem, "temp_size_in_bytes", 0) / 1e6 if mem is not None else float("nan")}
  return run, info


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=None, help="model name (default: configs/demo.py's, 'tiny')")
  p.add_argument("--res", type=int, default=None, help="image size (default: the demo's, 96)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the demo's, 64)")
  p.add_argument("--variants", default="single,dp8,fsdp2,fsdp8,dp8_nocomm,floor8",
                 help=f"comma-separated, the first is the baseline; from {list(VARIANTS)}")
  p.add_argument("--rounds", type=int, default=20, help="alternating timed rounds (median reported)")
  p.add_argument("--steps", type=int, default=3, help="steps per round per variant (dispatched back to back, "
                 "as the loop does, then one sync)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after compiling")
  p.add_argument("--dump-hlo", default=None, help="write each variant's optimized HLO to this directory")
  p.add_argument("--system-malloc", action="store_true",
                 help="do not re-run under GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see the top of this file)")
  args = p.parse_args()

  config = demo.get_config()
  config.model.name = args.model or config.model.name
  config.data.image_size = args.res or config.data.image_size
  config.batch_size = args.batch or config.batch_size
  names = args.variants.split(",")
  for n in names:
    if n not in VARIANTS:
      p.error(f"unknown variant {n!r}; choose from {list(VARIANTS)}")
  bs, res = config.batch_size, config.data.image_size
  if any(bs % (VARIANTS[n].num_devices * VARIANTS[n].split) for n in names):
    p.error(f"--batch {bs} must be divisible by 8")

  model = create_model(config.model.name, num_classes=NUM_TAGS, act=config.model.act,
                       attn=None if config.model.attn == "none" else config.model.attn,
                       dtype=jnp.dtype(config.model.dtype), drop_path_rate=config.model.drop_path_rate)
  schedule = optimizer.make_schedule(config.optim, 10_000, 100)
  tx = optimizer.make_optimizer(config.optim, schedule)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (bs, res, res, 3), dtype=np.uint8)
  labels = (rng.random((bs, NUM_TAGS)) < 0.1).astype(np.float32)

  runs, info = {}, {}
  for n in names:
    t = time.perf_counter()
    runs[n], info[n] = build_variant(n, config, model, tx, schedule, images, labels, args.dump_hlo)
    info[n]["build_s"] = time.perf_counter() - t
  for fn in runs.values():
    fn(args.warmup)
  wall, cpu, faults = ({n: [] for n in names} for _ in range(3))
  for _ in range(args.rounds):
    for n, fn in runs.items():
      t, c, f = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      fn(args.steps)
      wall[n].append((time.perf_counter() - t) / args.steps)
      cpu[n].append((time.process_time() - c) / args.steps)
      faults[n].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f) / args.steps)
  # Ratios pair each round's variant with the same round's baseline, so slow phases of a shared
  # machine cancel; the spread is the 25-75% range of those per-round ratios.
  base = names[0]
  paired = {n: np.array(wall[n]) / np.array(wall[base]) for n in names}
  wall, cpu, faults = ({n: float(np.median(v)) for n, v in d.items()} for d in (wall, cpu, faults))

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(partitioning.abstract_params(model, (1, res, res, 3))))
  print(f"sw_zoo train step, {config.model.name}_{config.model.act}_{config.model.attn} ({n_params / 1e6:.2f}M params), "
        f"{config.optim.name} {step_options(config)}, global batch {bs} at {res} px, {config.model.dtype}; "
        f"{jax.device_count()} simulated {jax.default_backend()} devices on {os.cpu_count()} cores; "
        f"{args.rounds} alternating rounds x {args.steps} steps, median; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print(f"baseline: {base} (mesh {info[base]['mesh']})")
  worst = None
  for n in names:
    ratio = float(np.median(paired[n]))
    spread = np.percentile(paired[n], [25, 75])
    judged = n != base and VARIANTS[n].judged
    verdict = f"  {'PASS' if ratio <= TARGET else 'FAIL'} (target <= {TARGET}x)" if judged else "  (diagnostic)" if n != base else ""
    if judged:
      worst = max(worst or 0.0, ratio)
    i = info[n]
    colls = ", ".join(f"{c} {k} {b / 1e6:.2f} MB" for k, (c, b) in sorted(i["collectives"].items())) or "none"
    print(f"  {n:12s} {wall[n] * 1e3:8.1f} ms/step {bs / wall[n]:7.1f} img/s  ratio {ratio:.3f}x "
          f"[{spread[0]:.2f}-{spread[1]:.2f}]{verdict}")
    print(f"               mesh {i['mesh']}; CPU {cpu[n] * 1e3:.1f} ms/step (ratio {cpu[n] / cpu[base]:.3f}x); "
          f"page faults {faults[n] * 4096 / 1e6:.0f} MB/step; XLA temp {i['temp_mb']:.0f} MB/device; "
          f"sharded state leaves {i['sharded_leaves']}; compile+init {i['build_s']:.0f} s")
    print(f"               collectives/step: {colls}")
  if worst is not None:
    print(f"worst judged ratio {worst:.3f}x: {'PASS' if worst <= TARGET else 'FAIL'} (target <= {TARGET}x)")


if __name__ == "__main__":
  main()
