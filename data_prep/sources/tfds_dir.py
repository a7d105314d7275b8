"""A tensorflow_datasets dataset already prepared on disk (`tfds.builder_from_directory`).

Features used: one `Image` feature (encoded bytes are read undecoded) and one label feature:
`Sequence(ClassLabel)` / `ClassLabel` (names from the feature), `Sequence(Text)` / `Text`
(tag strings), or a 1-D bool/int multi-hot `Tensor` (names from `label_names`, a file with one
name per line, else `label_0`, `label_1`, ...). Keys are found automatically when there is only
one candidate, or set with `image_key` / `labels_key`; `id_key` names an integer id feature
(otherwise items are numbered in reading order). The dataset's own splits are kept (`valid`,
`val`, `dev` are called `validation`); when it has no validation split, one is carved out of
`train` by id % 1000 like the other sources.

Reading needs no TensorFlow for datasets prepared with `file_format="array_record"` (random
access via `as_data_source`); the default tfrecord format needs TensorFlow installed.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from data_prep.sources import BAD_ID, SourceItem, check_id
from data_prep.tags import RawTag, normalize_tag, parse_tag_string

_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


def _import_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def split_name(tfds_split: str) -> str:
  name = _SPLIT_ALIASES.get(tfds_split, tfds_split)
  return name.replace("-", "_").replace("/", "_")


class TfdsSource:
  kind = "tfds"
  split_by = "source"

  def __init__(self, directory: str | os.PathLike, *, image_key: str | None = None,
               labels_key: str | None = None, id_key: str | None = None,
               label_names: str | os.PathLike | None = None, builder=None):
    """`builder` replaces `tfds.builder_from_directory(directory)` (tests, custom builders)."""
    tfds = _import_tfds()
    self.directory = os.path.abspath(os.fspath(directory))
    self.builder = builder if builder is not None else tfds.builder_from_directory(self.directory)
    features = self.builder.info.features
    self.image_key = image_key or self._only(
        features, lambda f: isinstance(f, tfds.features.Image), "Image", "--image-key")
    self.labels_key = labels_key or self._only(features, self._is_label_feature,
                                               "label", "--labels-key")
    self.id_key = id_key
    for key in (self.image_key, self.labels_key) + ((id_key,) if id_key else ()):
      if key not in features:
        raise ValueError(f"{self.directory}: no feature {key!r}; features: {sorted(features)}")
    self.label_feature = features[self.labels_key]
    self.names = self._label_names(label_names)
    self.splits = sorted(self.builder.info.splits.keys())
    self.has_validation = any(split_name(s) == "validation" for s in self.splits)

  @staticmethod
  def _only(features, predicate, what, flag) -> str:
    keys = [k for k in features.keys() if predicate(features[k])]
    if len(keys) != 1:
      raise ValueError(f"tfds dataset has {len(keys)} {what} features ({keys}) among "
                       f"{sorted(features.keys())}; choose one with {flag}")
    return keys[0]

  @staticmethod
  def _is_label_feature(feature) -> bool:
    tfds = _import_tfds()
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if isinstance(inner, (tfds.features.ClassLabel, tfds.features.Text)):
      return True
    return (isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 1
            and np.dtype(feature.np_dtype).kind in "biu")

  def _label_names(self, label_names) -> list[str] | None:
    tfds = _import_tfds()
    feature = self.label_feature
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if isinstance(inner, tfds.features.ClassLabel):
      return [normalize_tag(n) for n in inner.names]
    if isinstance(inner, tfds.features.Text):
      return None
    if label_names:
      with open(os.fspath(label_names), encoding="utf-8") as f:
        names = [normalize_tag(line) for line in f if line.strip()]
    else:
      names = [f"label_{i}" for i in range(feature.shape[0])]
    if len(names) != feature.shape[0]:
      raise ValueError(f"{label_names}: {len(names)} names for a {feature.shape[0]}-wide "
                       f"multi-hot feature {self.labels_key!r}")
    return names

  def describe(self) -> dict[str, Any]:
    return {"directory": self.directory, "name": self.builder.info.name,
            "version": str(self.builder.info.version), "image_key": self.image_key,
            "labels_key": self.labels_key, "id_key": self.id_key}

  def _tags(self, value) -> list[RawTag]:
    if self.names is None:  # Text features: tag strings.
      values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
      texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
      if len(texts) == 1:
        return [RawTag(t) for t in parse_tag_string(texts[0])]
      return [RawTag(normalize_tag(t)) for t in texts if normalize_tag(t)]
    array = np.asarray(value)
    tfds = _import_tfds()
    if isinstance(self.label_feature, tfds.features.Tensor):
      indices = np.flatnonzero(array)
    else:
      indices = array.reshape(-1).astype(np.int64)
    return [RawTag(self.names[int(i)]) for i in indices]

  def _examples(self, split: str) -> Iterator[dict]:
    tfds = _import_tfds()
    decoders = {self.image_key: tfds.decode.SkipDecoding()}
    file_format = str(getattr(self.builder.info, "file_format", "") or "")
    if "array_record" in file_format.lower():
      source = self.builder.as_data_source(split=split, decoders=decoders)
      for i in range(len(source)):
        yield source[i]
    else:
      try:
        dataset = self.builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
      except ImportError as e:
        raise ValueError(f"{self.directory} is stored as {file_format or 'tfrecord'}, which "
                         "needs TensorFlow to read; install tensorflow, or re-prepare the "
                         "dataset with file_format='array_record'") from e
      yield from tfds.as_numpy(dataset)

  def __iter__(self) -> Iterator[SourceItem]:
    counter = 0
    for tfds_split in self.splits:
      split = split_name(tfds_split)
      for index, example in enumerate(self._examples(tfds_split)):
        key = f"{tfds_split}/{index}"
        if self.id_key:
          try:
            post_id = check_id(example[self.id_key])
          except ValueError as e:
            yield SourceItem(key=key, split=split, error=(BAD_ID, f"{key}: {e}"))
            continue
        else:
          post_id = counter
        counter += 1
        image = example[self.image_key]
        if isinstance(image, np.ndarray):  # Undecoded images arrive as 0-d object arrays.
          image = image.item()
        yield SourceItem(key=key, id=post_id, split=split, image=bytes(image),
                         tags=self._tags(example[self.labels_key]))
