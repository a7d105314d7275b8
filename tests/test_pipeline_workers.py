"""Training batches from grain worker processes (`num_workers`): same stream, same exact resume."""

import multiprocessing
import pickle

import grain
import numpy as np
import pytest
from etils import epath

from sw_zoo.data import pipeline
from tests.test_pipeline import IMAGE_SIZE, _assert_batches_equal, _take, data_dir  # noqa: F401  (fixture)

BATCH = 8  # the shared data_dir holds 64 training examples: 8 batches per epoch
SPEC = {"ops": "letterbox,rrc,flip,rotate,cutout", "rrc_scale": (0.5, 1.0), "rotate_deg": 10,
        "resize_methods": "bilinear,bicubic,lanczos,box"}


def _train(data_dir, **overrides):
  kwargs = dict(global_batch_size=BATCH, image_size=IMAGE_SIZE, seed=0, num_threads=2,
                prefetch_batches=2)
  kwargs.update(overrides)
  return pipeline.make_train_dataset(data_dir, **kwargs)


def _save(iterator, directory):
  """Checkpoints the iterator the way the trainer does: grain's Orbax handler, JSON on disk."""
  directory.mkdir()  # Orbax creates a step's item directory before the handler writes.
  grain.checkpoint.CheckpointHandler().save(epath.Path(directory),
                                            args=grain.checkpoint.CheckpointSave(iterator))


def _restore(directory, fresh):
  """Restores into `fresh` the way the trainer does (set_state, then start_prefetch)."""
  return grain.checkpoint.CheckpointHandler().restore(
      epath.Path(directory), args=grain.checkpoint.CheckpointRestore(fresh))


@pytest.mark.slow
def test_workers_give_the_thread_stream_and_resume_exactly(data_dir, tmp_path):
  expected = _take(iter(_train(data_dir, augment_spec=SPEC)), 15)
  iterator = iter(_train(data_dir, augment_spec=SPEC, num_workers=2))
  _assert_batches_equal(expected[:3], _take(iterator, 3))
  # The in-process reader's state format, whatever the worker count.
  assert iterator.get_state() == {"next_index": 3}
  _save(iterator, tmp_path / "at_3")
  # 12 more batches cross an epoch boundary (the reshuffle) and are still the same.
  _assert_batches_equal(expected[3:], _take(iterator, 12))
  iterator.close()  # Stops the worker processes (not left for garbage collection).
  assert not [p for p in multiprocessing.active_children() if p.name.startswith("grain")]
  with pytest.raises(ValueError):
    next(iterator)

  # A fresh pipeline, as after a restart, resumes at batch 3 exactly.
  resumed = _restore(tmp_path / "at_3", iter(_train(data_dir, augment_spec=SPEC, num_workers=2)))
  _assert_batches_equal(expected[3:], _take(resumed, 12))
  resumed.close()
  # The worker count may change between runs: a 2-worker checkpoint resumes in-process, and an
  # in-process one with a worker.
  in_process = _restore(tmp_path / "at_3", iter(_train(data_dir, augment_spec=SPEC)))
  _assert_batches_equal(expected[3:6], _take(in_process, 3))
  _save(in_process, tmp_path / "at_6")
  one_worker = _restore(tmp_path / "at_6", iter(_train(data_dir, augment_spec=SPEC,
                                                       num_workers=1)))
  _assert_batches_equal(expected[6:9], _take(one_worker, 3))
  one_worker.close()


@pytest.mark.slow
def test_workers_with_repeat_factor_sampling_and_no_augmentation(data_dir):
  # The sampler and the record lookup are pickled into the workers too.
  for kwargs in ({"repeat_factor_threshold": 0.2}, {"augment": False}):
    expected = _take(iter(_train(data_dir, **kwargs)), 10)
    iterator = iter(_train(data_dir, num_workers=2, **kwargs))
    _assert_batches_equal(expected, _take(iterator, 10))
    iterator.close()


def test_num_workers_is_validated(data_dir):
  for bad in (-1, 1.5, True, "2"):
    with pytest.raises(ValueError, match=r"num_workers \(config.data.num_workers\).*"
                                         + repr(bad).replace(".", r"\.")):
      _train(data_dir, num_workers=bad)
  iterator = iter(_train(data_dir, num_workers=2))  # No worker starts before the first batch.
  with pytest.raises(ValueError, match="next_index must be an int >= 0"):
    iterator.set_state({"next_index": -1})
  iterator.close()


def test_augmenter_pickles_as_its_spec():
  augmenter = pipeline._Augmenter(SPEC, 24)
  clone = pickle.loads(pickle.dumps(augmenter))  # Plain pickle: no closure is shipped.
  image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
  np.testing.assert_array_equal(augmenter(image, np.random.default_rng(1)),
                                clone(image, np.random.default_rng(1)))
  with pytest.raises(ValueError, match="unknown op 'zoom'"):
    pipeline._Augmenter({"ops": "zoom"}, 24)


def test_config_num_workers_is_checked():
  from configs import common
  from sw_zoo.train import config_check

  config = common.base_config()
  assert config.data.num_workers == 0  # Threads only unless asked: today's behaviour.
  config_check.validate(config)
  config.data.num_workers = -1
  with pytest.raises(ValueError, match=r"config\.data\.num_workers = -1: expected an int >= 0"):
    config_check.validate(config)
