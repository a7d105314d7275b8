"""grain pipelines: process slicing, batch shapes, determinism, epochs, resumption, eval cover."""

import hashlib
import shutil

import grain
import numpy as np
import pytest

from data_prep import synthetic
from sw_zoo.data import augment, augment_spec, balance, dataset_info, pipeline, records, remote_dataset

NUM_TRAIN, NUM_VAL, IMAGE_SIZE = 64, 24, 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(out, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=IMAGE_SIZE, seed=1,
                     shard_size=16, workers=1, progress=False)
  return out


def _train(data_dir, **overrides):
  kwargs = dict(global_batch_size=8, image_size=IMAGE_SIZE, seed=0, process_index=0,
                process_count=1)
  kwargs.update(overrides)
  return pipeline.make_train_dataset(data_dir, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("num_examples", [0, 1, 7, 24, 64, 65])
def test_process_slices_disjoint_and_complete(num_examples):
  for process_count in range(1, 5):
    slices = [pipeline.process_slice_indices(num_examples, i, process_count)
              for i in range(process_count)]
    joined = np.concatenate(slices)
    assert len(joined) == len(set(joined.tolist())) == num_examples
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_examples))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    # Contiguous blocks: a process touches only the shards holding its block (gs:// staging).
    assert all(np.array_equal(s, np.arange(s[0], s[0] + len(s))) for s in slices if len(s))
  with pytest.raises(ValueError):
    pipeline.process_slice_indices(10, 2, 2)


def test_a_process_opens_only_the_shards_of_its_block(data_dir, tmp_path):
  """dataset.json's shard_examples lets a process open just the shards holding its block; the
  records it reads are those of the same block of the whole split, with or without the counts."""
  info = dataset_info.read_dataset_info(data_dir)
  full = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, "train"))
  old_style = tmp_path / "no_counts"
  shutil.copytree(data_dir, old_style)
  dataset_info.write_dataset_info(old_style, {**info, "splits": {
      k: {kk: vv for kk, vv in v.items() if kk != "shard_examples"} for k, v in info["splits"].items()}})
  for process_index in range(3):
    block = pipeline.process_slice(len(full), process_index, 3)
    want = [full[i] for i in range(block.start, block.stop)]
    for directory in (data_dir, old_style):
      _, local, total = pipeline._open_split(str(directory), "train", process_index, 3)
      assert total == len(full) and [local[i] for i in range(len(local))] == want
    shards, _ = remote_dataset.block_shards(info["splits"]["train"], block.start, block.stop)
    assert len(shards) < len(info["splits"]["train"]["shards"])


def test_train_batch_shapes_and_dtypes(data_dir):
  num_labels = dataset_info.read_dataset_info(data_dir)["num_labels"]
  batch = next(iter(_train(data_dir, global_batch_size=16, process_index=1, process_count=2)))
  assert set(batch) == {"image", "labels"}
  assert batch["image"].shape == (8, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch["image"].dtype == np.uint8
  assert batch["labels"].shape == (8, num_labels) and batch["labels"].dtype == np.float32
  assert set(np.unique(batch["labels"])) <= {0.0, 1.0}
  np.testing.assert_array_equal(batch["labels"][:, :4].sum(axis=1), 1)  # One rating each.
  resized = next(iter(_train(data_dir, image_size=24)))
  assert resized["image"].shape == (8, 24, 24, 3)
  with pytest.raises(ValueError, match="multiple of process_count"):
    _train(data_dir, global_batch_size=10, process_count=4)


def test_same_seed_same_batches_other_seed_differs(data_dir):
  first = _take(iter(_train(data_dir)), 5)
  _assert_batches_equal(first, _take(iter(_train(data_dir)), 5))
  other = _take(iter(_train(data_dir, seed=1)), 5)
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))


def test_each_epoch_covers_the_slice_in_a_new_order(data_dir):
  batches_per_epoch = NUM_TRAIN // 8
  iterator = iter(_train(data_dir, augment=False))
  epochs = []
  for _ in range(3):
    epoch = [hashlib.md5(image.tobytes()).hexdigest()
             for batch in _take(iterator, batches_per_epoch) for image in batch["image"]]
    epochs.append(epoch)
  assert len(set(epochs[0])) == NUM_TRAIN
  assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])
  assert epochs[0] != epochs[1] != epochs[2]


def test_iterator_state_resumes_exactly(data_dir):
  iterator = iter(_train(data_dir))
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 12)  # Crosses an epoch boundary (8 batches per epoch).
  resumed = iter(_train(data_dir))  # A fresh pipeline, as after a restart.
  resumed.set_state(state)
  _assert_batches_equal(expected, _take(resumed, 12))


def _validation_ids(data_dir):
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, "validation"))
  return [records.decode_record(source[i])["id"] for i in range(len(source))]


@pytest.mark.parametrize("global_batch_size, process_count", [(10, 1), (8, 4), (5, 5), (6, 3)])
def test_eval_covers_every_example_once(data_dir, global_batch_size, process_count):
  num_labels = dataset_info.read_dataset_info(data_dir)["num_labels"]
  seen = []
  lengths = set()
  for process_index in range(process_count):
    ds = pipeline.make_eval_dataset(data_dir, global_batch_size=global_batch_size,
                                    image_size=IMAGE_SIZE, process_index=process_index,
                                    process_count=process_count)
    batches = list(ds)
    assert len(batches) == len(ds)
    lengths.add(len(ds))
    for batch in batches:
      b = global_batch_size // process_count
      assert batch["image"].shape == (b, IMAGE_SIZE, IMAGE_SIZE, 3)
      assert batch["labels"].shape == (b, num_labels)
      assert batch["mask"].dtype == np.bool_
      assert np.all(batch["id"][~batch["mask"]] == -1)
      assert np.all(batch["labels"][~batch["mask"]] == 0)
      seen.extend(batch["id"][batch["mask"]].tolist())
    assert sum(int(b["mask"].sum()) for b in batches) == ds.num_examples
  assert len(lengths) == 1  # All processes run the same number of eval steps.
  assert sorted(seen) == sorted(_validation_ids(data_dir))


def test_eval_is_decode_plus_preprocess_only(data_dir):
  batch = next(iter(pipeline.make_eval_dataset(data_dir, global_batch_size=4, image_size=20)))
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, "validation"))
  first = records.decode_record(source[0])
  assert batch["id"][0] == first["id"]
  expected = augment.preprocess_eval(records.decode_image(first["image"]), 20)
  np.testing.assert_array_equal(batch["image"][0], expected)
  # Two passes give identical batches.
  ds = pipeline.make_eval_dataset(data_dir, global_batch_size=4, image_size=20)
  _assert_batches_equal(list(ds), list(ds))


def test_augment_is_seeded_and_label_preserving_in_shape():
  image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  outs = [augment.augment(image, np.random.default_rng(s), 32) for s in range(20)]
  for out in outs:
    assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
  np.testing.assert_array_equal(outs[0], augment.augment(image, np.random.default_rng(0), 32))
  assert len({o.tobytes() for o in outs}) > 10
  # Some outputs are horizontal mirrors of a translation; none are the unchanged input only.
  assert any(not np.array_equal(o, image) for o in outs)


def test_preprocess_eval_letterboxes_non_square():
  tall = np.zeros((40, 20, 3), np.uint8)
  out = augment.preprocess_eval(tall, 16)
  assert out.shape == (16, 16, 3)
  assert out[8, 0].tolist() == [255, 255, 255] and out[8, 8].tolist() == [0, 0, 0]


# ---- Augmentation specs and repeat-factor sampling -----------------------------------------

SPEC = {"ops": "letterbox,rrc,flip,rotate,cutout", "rrc_scale": (0.5, 1.0), "rotate_deg": 10,
        "resize_methods": "bilinear,bicubic,lanczos,box"}


def test_augment_spec_batches_are_seeded_and_resume_exactly(data_dir):
  first = _take(iter(_train(data_dir, augment_spec=SPEC, image_size=24)), 3)
  assert first[0]["image"].shape == (8, 24, 24, 3) and first[0]["image"].dtype == np.uint8
  _assert_batches_equal(first, _take(iter(_train(data_dir, augment_spec=SPEC, image_size=24)), 3))
  default = _take(iter(_train(data_dir, image_size=24)), 3)
  assert not np.array_equal(first[0]["image"], default[0]["image"])
  # The default spec, spelled out, is the default.
  _assert_batches_equal(default, _take(iter(_train(data_dir, image_size=24,
                                                   augment_spec=augment_spec.DEFAULT_SPEC)), 3))
  iterator = iter(_train(data_dir, augment_spec=SPEC))
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 4)
  resumed = iter(_train(data_dir, augment_spec=SPEC))
  resumed.set_state(state)
  _assert_batches_equal(expected, _take(resumed, 4))


def test_augment_false_means_eval_preprocessing_whatever_the_spec(data_dir):
  plain = _take(iter(_train(data_dir, augment=False)), 2)
  _assert_batches_equal(plain, _take(iter(_train(data_dir, augment=False, augment_spec=SPEC)), 2))
  with pytest.raises(ValueError, match="unknown op 'zoom'"):
    _train(data_dir, augment_spec={"ops": "zoom"})


def _local_ids_by_image(data_dir, process_index, process_count):
  """{hash of the unaugmented image: global example index} for one process's slice."""
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, "train"))
  num_labels = dataset_info.read_dataset_info(data_dir)["num_labels"]
  out = {}
  for i in pipeline.process_slice_indices(len(source), process_index, process_count):
    image = pipeline.decode_example(source[int(i)], num_labels=num_labels,
                                    image_size=IMAGE_SIZE)["image"]
    out[hashlib.md5(image.tobytes()).hexdigest()] = int(i)
  return out


def test_read_split_labels_is_the_slice_labels_in_csr(data_dir):
  source = grain.sources.ArrayRecordDataSource(dataset_info.split_paths(data_dir, "train"))
  offsets, indices = pipeline.read_split_labels(data_dir, "train", process_index=1,
                                                process_count=3, num_threads=1)
  expected = [records.decode_record(source[int(i)])["labels"]
              for i in pipeline.process_slice_indices(len(source), 1, 3)]
  assert len(offsets) == len(expected) + 1
  for k, labels in enumerate(expected):
    np.testing.assert_array_equal(indices[offsets[k]:offsets[k + 1]], labels)


def test_repeat_factor_sampling_oversamples_rare_tags_per_process(data_dir):
  threshold = 0.3
  for process_index in range(2):
    ids = _local_ids_by_image(data_dir, process_index, 2)
    iterator = iter(_train(data_dir, augment=False, repeat_factor_threshold=threshold,
                           global_batch_size=16, process_index=process_index, process_count=2))
    seen = [ids[hashlib.md5(image.tobytes()).hexdigest()]  # KeyError: not this process's
            for batch in _take(iterator, 40) for image in batch["image"]]
    offsets, indices = pipeline.read_split_labels(data_dir, process_index=process_index,
                                                  process_count=2)
    factors = balance.repeat_factors(offsets, indices, threshold=threshold)
    assert factors.min() < 1.6 and factors.max() > 2.5
    counts = np.bincount([sorted(ids.values()).index(i) for i in seen], minlength=len(ids))
    assert set(np.flatnonzero(counts)) == set(range(len(ids)))  # everyone is still sampled
    rate = counts / counts.sum() * factors.sum()  # ~ factors (~4.5 sampling epochs seen)
    assert np.mean(np.abs(rate - factors) / factors) < 0.25
    assert rate[factors > 2.5].mean() > 1.5 * rate[factors < 2].mean()


def test_repeat_factor_iterator_resumes_exactly(data_dir):
  kwargs = dict(repeat_factor_threshold=0.3, augment_spec=SPEC, image_size=16)
  iterator = iter(_train(data_dir, **kwargs))
  _take(iterator, 5)
  state = iterator.get_state()
  expected = _take(iterator, 12)  # crosses at least one sampling epoch (>= 64 examples each)
  resumed = iter(_train(data_dir, **kwargs))
  resumed.set_state(state)
  _assert_batches_equal(expected, _take(resumed, 12))
  normalized = _take(iter(_train(data_dir, repeat_factor_normalize=True, **kwargs)), 2)
  assert normalized[0]["image"].shape == (8, 16, 16, 3)
