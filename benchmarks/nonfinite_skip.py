"""Cost of skip_nonfinite in the donated train step: jnp.where over the state (steps.py) vs lax.cond.

  python benchmarks/nonfinite_skip.py                        # l0 at 64 px, batch 32, one device: ~5 minutes
  python benchmarks/nonfinite_skip.py --devices 8            # dp over 8 simulated CPU devices
  python benchmarks/nonfinite_skip.py --model tiny --res 96 --batch 64

steps.train_step skips a non-finite update with `jnp.where(finite, new, old)` over params and
optimizer state. Under donation (loop.py donates the state) XLA then has to keep the old state
alive until the global finite flag is known, so new moments cannot be written in place. The
candidate computes the flag from the gradients first and runs the optimizer update inside
`jax.lax.cond(finite, update, keep)`: the update happens in place or not at all.

Timed in alternating rounds in one process (median), all donated as the loop does:
  where       steps.train_step(skip_nonfinite=True)   (baseline: the trainer today)
  cond        the same step with the update under lax.cond
  no_skip     steps.train_step(skip_nonfinite=False)  (the floor)
Demo settings otherwise (AdamW, no EMA, no MixUp, no accumulation). Runs under
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 like sharded_step.py (--system-malloc: plain glibc).
"""
from __future__ import annotations

import argparse
import os
import sys

if "--system-malloc" not in sys.argv and "GLIBC_TUNABLES" not in os.environ:
  os.environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"  # why: see benchmarks/sharded_step.py
  os.execv(sys.executable, [sys.executable] + sys.argv)
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--devices", type=int, default=1)
if (_n := _pre.parse_known_args()[0].devices) > 1:  # XLA reads its flags before jax initialises
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import demo  # noqa: E402
from sw_zoo import sharding  # noqa: E402
from sw_zoo.models import create_model  # noqa: E402
from sw_zoo.train import losses, optimizer, steps  # noqa: E402

NUM_TAGS = 65


def cond_step(state, batch, *, model, tx, loss_fn, schedule):
  """steps.train_step's demo path (no mix, EMA or accumulation) with the update under lax.cond."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  _, micro_key = jax.random.split(step_key)
  rngs = dict(zip(steps.RNG_STREAMS, jax.random.split(micro_key, len(steps.RNG_STREAMS))))
  images, labels = batch["image"].astype(jnp.float32), batch["labels"]

  def loss_of(p):
    return loss_fn(model.apply({"params": p}, images, train=True, rngs=rngs), labels, None).mean()
  loss, grads = jax.value_and_grad(loss_of)(state.params)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
  skipped = state.skipped_steps + (~finite).astype(jnp.int32)
  stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
           "nonfinite": (~finite).astype(jnp.float32), "skipped_steps": skipped}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, skipped_steps=skipped), stats


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="l0")
  p.add_argument("--res", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--devices", type=int, default=1, help="simulated CPU devices; mesh data=N, state replicated")
  p.add_argument("--rounds", type=int, default=6, help="alternating timed rounds (median reported)")
  p.add_argument("--system-malloc", action="store_true", help="do not re-run under glibc.malloc.hugetlb=1")
  args = p.parse_args()

  config = demo.get_config()
  model = create_model(args.model, num_classes=NUM_TAGS, act=config.model.act, attn=config.model.attn,
                       dtype=jnp.dtype(config.model.dtype))
  schedule = optimizer.make_schedule(config.optim, 10_000, 100)
  tx = optimizer.make_optimizer(config.optim, schedule)
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1)])
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  batch = {"image": jax.device_put(rng.integers(0, 256, (args.batch, args.res, args.res, 3), dtype=np.uint8), batch_sh),
           "labels": jax.device_put((rng.random((args.batch, NUM_TAGS)) < 0.1).astype(np.float32), batch_sh)}
  init_fn = functools.partial(steps.init_state, model, tx, image_size=args.res, seed=0)
  state_sh = jax.tree.map(lambda _: repl, jax.eval_shape(init_fn))
  common = dict(model=model, tx=tx, loss_fn=losses.sigmoid_bce, schedule=schedule)
  candidates = {"where": functools.partial(steps.train_step, **common, skip_nonfinite=True),
                "cond": functools.partial(cond_step, **common),
                "no_skip": functools.partial(steps.train_step, **common, skip_nonfinite=False)}
  runs, temp = {}, {}
  for name, fn in candidates.items():
    compiled = jax.jit(fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                       donate_argnums=(0,)).lower(jax.eval_shape(init_fn), batch).compile()
    temp[name] = compiled.memory_analysis().temp_size_in_bytes / 1e6
    holder = {"state": jax.jit(init_fn, out_shardings=state_sh)()}

    def run(compiled=compiled, holder=holder):
      holder["state"], stats = compiled(holder["state"], batch)
      jax.block_until_ready(stats["loss"])
    run()
    runs[name] = run
  wall, cpu = ({n: [] for n in runs} for _ in range(2))
  for _ in range(args.rounds):
    for n, run in runs.items():
      t, c = time.perf_counter(), time.process_time()
      run()
      wall[n].append(time.perf_counter() - t)
      cpu[n].append(time.process_time() - c)
  paired = {n: float(np.median(np.array(wall[n]) / np.array(wall["where"]))) for n in runs}
  print(f"{args.model}, batch {args.batch} at {args.res} px, donated state, {jax.device_count()} "
        f"{jax.default_backend()} device(s), {os.cpu_count()} cores; {args.rounds} alternating rounds, median; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print("baseline: where (steps.train_step as the trainer runs it)")
  for n in runs:
    print(f"  {n:8s} {np.median(wall[n]) * 1e3:7.0f} ms/step  CPU {np.median(cpu[n]) * 1e3:7.0f} ms  "
          f"XLA temp {temp[n]:5.0f} MB/device  ratio {paired[n]:.2f}x")


if __name__ == "__main__":
  main()
