"""Output heads and pooling (sw_zoo/models/heads.py), their losses and their evaluation: the
heteroscedastic tag head, attention pooling, the box head, the robust loss as a config entry,
calibration / element-wise accuracy and the box scores."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.common import base_config
from sw_zoo.evaluation import box_metrics, metrics
from sw_zoo.models import create_model
from sw_zoo.models.heads import mc_average_logits
from sw_zoo.models.spec import heads_of, spec_from_run_config
from sw_zoo.train import config_check, losses, optimizer, steps


def _images(seed, batch, size=64):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3)), jnp.float32)


@functools.lru_cache(maxsize=None)
def _init(heads=("tags",), pool="mean", noise_scale=1.0, num_tags=7):
  model = create_model("nano", num_classes=num_tags, heads=heads, pool=pool, het_noise_scale=noise_scale)
  params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False)["params"])(_images(0, 1))
  return model, params


def _apply(model, params, x, **kw):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, **kw))(params, x)


def _with_shared(params, source):
  """`params` with every leaf `source` also has taken from it (backbone + plain head)."""
  flat, src = traverse_util.flatten_dict(params), traverse_util.flatten_dict(source)
  return traverse_util.unflatten_dict({k: src.get(k, v) for k, v in flat.items()})


def test_heteroscedastic_mean_approaches_the_plain_head_as_the_noise_vanishes():
  x = _images(1, 4)
  plain_model, plain = _init()
  plain_logits = np.asarray(_apply(plain_model, plain, x))
  gaps = []
  for scale in (1.0, 1e-2, 1e-4):
    model, params = _init(heads=("heteroscedastic_tags",), noise_scale=scale)
    params = _with_shared(params, plain)
    # Noisy enough at scale 1 that the average visibly differs from the mean logits.
    params["het"]["diag"]["bias"] = jnp.full_like(params["het"]["diag"]["bias"], 2.0)
    probs = jax.nn.sigmoid(_apply(model, params, x))
    gaps.append(float(np.abs(np.asarray(probs) - jax.nn.sigmoid(plain_logits)).max()))
  assert gaps[0] > 1e-2, gaps  # the noise matters at full scale ...
  # ... and fades with it (quadratically, down to float32 rounding of the log-space average)
  assert gaps[0] > gaps[1] > gaps[2] and gaps[1] < 1e-2 and gaps[2] < 1e-4, gaps


def test_heteroscedastic_noise_pulls_confident_scores_towards_one_half():
  # Averaging sigmoids of noisy logits shrinks them towards 0: calibrated softening, never flipping.
  mu = jnp.asarray([[-4.0, -1.0, 0.0, 1.0, 4.0]])
  samples = mu[None] + jnp.asarray(np.random.default_rng(0).normal(size=(4000, 1, 5)) * 3.0, jnp.float32)
  out = np.asarray(mc_average_logits(samples))[0]
  assert np.all(np.sign(out[[0, 1, 3, 4]]) == np.sign(np.asarray(mu)[0, [0, 1, 3, 4]]))
  assert np.all(np.abs(out[[0, 1, 3, 4]]) < np.abs(np.asarray(mu)[0, [0, 1, 3, 4]]))
  assert abs(out[2]) < 0.1  # Monte Carlo error around 0


def test_mc_average_logits_is_exact_and_finite_when_saturated():
  samples = jnp.asarray(np.random.default_rng(2).normal(size=(16, 3, 4)) * 5, jnp.float32)
  p = np.asarray(jax.nn.sigmoid(samples)).mean(0)
  np.testing.assert_allclose(np.asarray(mc_average_logits(samples)), np.log(p / (1 - p)), rtol=1e-4, atol=1e-4)
  saturated = jnp.full((8, 1, 2), 200.0).at[:, :, 1].set(-200.0)
  out = np.asarray(mc_average_logits(saturated))
  assert np.all(np.isfinite(out)) and out[0, 0] > 100 and out[0, 1] < -100


def test_heteroscedastic_predictions_do_not_depend_on_the_batch():
  model, params = _init(heads=("heteroscedastic_tags",))
  x = _images(3, 5)
  together = np.asarray(_apply(model, params, x))
  alone = np.concatenate([np.asarray(_apply(model, params, x[i:i + 1])) for i in range(5)])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_attention_pooling_starts_as_mean_pooling():
  mean_model, mean_params = _init()
  model, params = _init(pool="attention")
  params = _with_shared(params, mean_params)
  x = _images(4, 3)
  np.testing.assert_allclose(np.asarray(_apply(model, params, x)), np.asarray(_apply(mean_model, mean_params, x)),
                             rtol=1e-5, atol=1e-6)
  # A non-zero query makes it attend: the pooled vector moves.
  params["attn_pool"]["query"] = jnp.ones_like(params["attn_pool"]["query"]) * 3.0
  moved = _apply(model, params, x, return_features=True)["pooled"]
  assert float(jnp.abs(moved - _apply(mean_model, mean_params, x, return_features=True)["pooled"]).max()) > 1e-3


def test_box_head_output_is_an_ordered_box_and_flips_with_the_image():
  model, params = _init(heads=("tags", "box"))
  x = _images(5, 4)
  box = np.asarray(_apply(model, params, x, return_features=True)["box"])
  assert box.shape == (4, 4)
  assert np.all((box >= 0) & (box <= 1)) and np.all(box[:, 2] >= box[:, 0]) and np.all(box[:, 3] >= box[:, 1])
  np.testing.assert_allclose(box_metrics.flip_box(box_metrics.flip_box(box)), box, atol=1e-7)


def test_heads_config_reaches_the_model_spec_and_is_validated():
  c = base_config()
  assert spec_from_run_config(c, 5).overrides == {}  # a plain run's bundle looks as before
  c.model.heads, c.model.pool = "heteroscedastic_tags, box", "attention"
  c.model.het.rank = 3
  spec = spec_from_run_config(c, 5)
  assert spec.overrides["heads"] == ["heteroscedastic_tags", "box"] and spec.overrides["het_rank"] == 3
  assert spec.create().cfg.heads == ("heteroscedastic_tags", "box")
  assert heads_of(("tags",)) == ("tags",)
  for heads, word in (("box", "exactly one"), ("tags,heteroscedastic_tags", "exactly one"), ("tags,boxes", "boxes")):
    c = base_config()
    c.model.heads = heads
    with pytest.raises(config_check.ConfigError, match=rf"config\.model\.heads.*{word}"):
      config_check.validate(c)
  c = base_config()
  c.model.heads, c.mix.cutmix_alpha = "tags,box", 1.0
  with pytest.raises(config_check.ConfigError, match="config.mix"):
    config_check.validate(c)
  c = base_config()
  c.loss.robust, c.loss.robust_alpha = "adaptive", 2.5
  with pytest.raises(config_check.ConfigError, match="config.loss.robust_alpha"):
    config_check.validate(c)


def _step_fn(config, model, num_tags, box):
  sched = optimizer.make_schedule(config.optim, 100, 0)
  tx = optimizer.make_optimizer(config.optim, sched)
  loss_tx = losses.loss_optimizer(config.loss)
  state = steps.init_state(model, tx, image_size=64, seed=0, loss_params=losses.init_loss_params(config.loss, num_tags),
                           loss_tx=loss_tx)
  extra = dict(box_loss_fn=lambda p, t: losses.smooth_l1(p, t, 0.05), box_weight=10.0) if box else {}
  return state, jax.jit(functools.partial(steps.train_step, model=model, tx=tx, loss_fn=losses.make_loss(config.loss),
                                          schedule=sched, loss_tx=loss_tx, **extra))


def test_train_step_learns_boxes_and_the_adaptive_loss_shape():
  c = base_config()
  c.model.name, c.model.dtype, c.model.heads = "nano", "float32", "heteroscedastic_tags,box"
  c.loss.robust, c.optim.name, c.optim.lr, c.loss.robust_lr = "adaptive", "adamw", 3e-3, 3e-2
  model = spec_from_run_config(c, 6).create()
  state, step = _step_fn(c, model, 6, box=True)
  rng = np.random.default_rng(0)
  target = np.asarray([[0.1, 0.2, 0.5, 0.6]] * 8, np.float32)
  batch = {"image": _images(6, 8), "labels": jnp.asarray(rng.random((8, 6)) < 0.3, jnp.float32),
           "box": jnp.asarray(target), "box_mask": jnp.asarray([1, 1, 1, 1, 1, 1, 0, 0], jnp.float32)}
  first_alpha = None
  for i in range(30):
    state, stats = step(state, batch)
    if i == 0:
      first = {k: float(v) for k, v in stats.items()}
  assert float(stats["box_loss"]) < 0.5 * first["box_loss"]
  assert float(stats["tag_loss"]) < first["tag_loss"]
  first_alpha = first["robust_alpha"]
  assert float(stats["robust_alpha"]) != pytest.approx(first_alpha, abs=1e-4)  # the shape is learned
  # Rows without a box contribute no box gradient: changing their target changes nothing.
  moved = dict(batch, box=batch["box"].at[6:].set(jnp.asarray([0.0, 0.0, 1.0, 1.0])))
  a, _ = step(state, batch)
  b, _ = step(state, moved)
  leaves = lambda s: jax.tree.leaves(s.params["box_head"])
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves(a), leaves(b)))


def test_robust_general_loss_flattens_large_tag_losses():
  c = base_config().loss
  c.name = "bce"
  plain = losses.make_loss(c)
  c.robust, c.robust_alpha, c.robust_scale = "general", 0.0, 0.5  # Cauchy
  robust = losses.make_loss(c)
  logits = jnp.asarray([[8.0, 0.0]])
  wrong = jnp.asarray([[0.0, 1.0]])
  # A confidently contradicted tag (label noise, often) pushes the model far less than under BCE,
  # while an undecided one (logit 0) is pushed about as hard.
  grad = lambda fn: np.asarray(jax.grad(lambda z: fn(z, wrong).sum())(logits))[0]
  plain_grad, robust_grad = grad(plain), grad(robust)
  assert abs(robust_grad[0]) < 0.3 * abs(plain_grad[0])
  assert abs(robust_grad[1]) > 0.5 * abs(plain_grad[1])


def test_calibration_error_and_elementwise_accuracy():
  bins = 1000
  centre = (np.arange(bins) + 0.5) / bins
  total = np.full(bins, 1000.0)
  calibrated_pos = total * centre
  assert metrics.expected_calibration_error(calibrated_pos[None], (total - calibrated_pos)[None]) < 1e-9
  # Every score says 0.9 but only half are positives: ECE = 0.4.
  pos, neg = np.zeros((1, bins)), np.zeros((1, bins))
  pos[0, 900], neg[0, 900] = 50, 50
  assert metrics.expected_calibration_error(pos, neg) == pytest.approx(0.4, abs=1e-3)
  counts = {"tp": np.asarray([2.0, 0.0]), "fp": np.asarray([1.0, 0.0]), "fn": np.asarray([0.0, 1.0]),
            "support": np.asarray([2.0, 1.0])}
  assert metrics.threshold_scores(counts, 4)["elementwise_accuracy"] == pytest.approx(6 / 8)


def test_box_scores_and_extremes():
  pred = np.asarray([[0, 0, 0.5, 0.5], [0, 0, 1, 1], [0.5, 0.5, 1, 1]], np.float32)
  true = np.asarray([[0, 0, 0.5, 0.5], [0, 0, 0.5, 1], [0, 0, 0.5, 0.5]], np.float32)
  np.testing.assert_allclose(box_metrics.iou(pred, true), [1.0, 0.5, 0.0], atol=1e-6)
  stats = box_metrics.batch_box_stats(box_metrics.iou(jnp.asarray(pred), jnp.asarray(true), xp=jnp),
                                      jnp.asarray([1.0, 1.0, 0.0]), jnp.asarray([True, True, True]))
  scores = box_metrics.box_scores(jax.device_get(stats))
  assert scores == {"boxes": 2, "box_mean_iou": pytest.approx(0.75), "box_iou50_accuracy": 1.0}
  keep = box_metrics.Extremes(1)
  images = np.zeros((3, 8, 8, 3), np.uint8)
  keep.add(box_metrics.iou(pred, true), np.asarray([10, 11, 12]), images, pred, true)
  assert keep.best()[0][0] == 10 and keep.worst()[0][0] == 12
  drawn = box_metrics.draw(np.full((32, 32, 3), 255, np.uint8), pred[0], true[1])
  assert (drawn != 255).any()


@pytest.mark.slow
def test_box_and_heteroscedastic_run_end_to_end(tmp_path):
  """Train (box head + heteroscedastic tags + attention pooling + adaptive robust loss) on the
  synthetic set with boxes -> `sw-zoo eval` (box scores, best/worst picture) -> the bundle's
  Tagger returns a box on a user's image, in that image's coordinates."""
  import json
  import os

  from PIL import Image

  from data_prep import synthetic
  from sw_zoo.cli import eval as eval_cli
  from sw_zoo.inference.tagger import Tagger
  from sw_zoo.train.loop import train_and_evaluate
  from tests.test_train import tiny_config

  data = str(tmp_path / "data")
  synthetic.generate(data, num_train=64, num_val=16, image_size=32, seed=3, box=True, progress=False)
  workdir = str(tmp_path / "run")
  config = tiny_config(data, **{"model.heads": "heteroscedastic_tags,box", "model.pool": "attention",
                                "model.pool_heads": 4, "model.het.samples": 4, "loss.robust": "adaptive",
                                "total_steps": 4, "eval_every_steps": 2, "checkpoint.every_steps": 2})
  train_and_evaluate(config, workdir)
  # Resumes with the loss's learned params (and everything else) from the step-4 checkpoint.
  config.total_steps = 6
  result = train_and_evaluate(config, workdir)
  assert result["step"] == 6 and 0.0 <= result["box_mean_iou"] <= 1.0 and result["boxes"] == 16
  metrics_log = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  alphas = [m["train/robust_alpha"] for m in metrics_log if "train/robust_alpha" in m]
  assert len(alphas) == 3 and alphas[0] != alphas[-1]  # logged, learned, and carried across the resume

  out = str(tmp_path / "eval")
  assert eval_cli.main([workdir, "--out", out, "--no-plots", "--timing-repeats", "0", "--no-progress"]) == 0
  summary = json.load(open(os.path.join(out, "eval_summary.json")))
  assert summary["box_mean_iou"] == pytest.approx(result["box_mean_iou"], abs=1e-4)
  assert 0.0 <= summary["ece"] <= 1.0 and 0.0 <= summary["elementwise_accuracy"] <= 1.0
  assert Image.open(os.path.join(out, "box_best_worst.png")).size[0] > 0

  tagger = Tagger.from_bundle(os.path.join(workdir, "bundle"), backend="jax")
  assert tagger.has_box
  wide = np.full((40, 80, 3), 255, np.uint8)  # not square: the box comes back in its own frame
  prediction = tagger.predict(wide)
  x0, y0, x1, y1 = prediction.box
  assert 0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0
  assert prediction.to_json()["box"] == pytest.approx(list(prediction.box), abs=1e-6)
  # With flip TTA the box is the mean of the image's and its mirror's (flipped back).
  assert tagger.predict(wide, tta="flip").box is not None

  # `sw-zoo serve` answers with the same box, in the upload's own frame.
  import io

  from starlette.testclient import TestClient

  from sw_zoo.serve.app import create_app

  buffer = io.BytesIO()
  Image.fromarray(wide).save(buffer, format="PNG")
  with TestClient(create_app(tagger, max_batch=2, max_wait_ms=2)) as client:
    served = client.post("/tag", content=buffer.getvalue(), headers={"content-type": "image/png"})
  assert served.status_code == 200, served.text
  assert served.json()["box"] == pytest.approx(list(prediction.box), abs=1e-5)


def test_box_head_is_refused_on_a_dataset_without_boxes(tmp_path):
  from data_prep import synthetic
  from sw_zoo.train.loop import train_and_evaluate
  from tests.test_train import tiny_config

  data = str(tmp_path / "data")
  synthetic.generate(data, num_train=16, num_val=8, image_size=32, seed=3, progress=False)
  with pytest.raises(config_check.ConfigError, match="has no boxes"):
    train_and_evaluate(tiny_config(data, **{"model.heads": "tags,box"}), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "config.json")
