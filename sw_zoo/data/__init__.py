"""Data layer: record schema, tag vocabulary, dataset metadata, shard writing, grain pipelines."""

# `augment` the function is not re-exported: it would shadow the `sw_zoo.data.augment` module.
from sw_zoo.data.augment import preprocess_eval
from sw_zoo.data.dataset_info import (DATASET_INFO_FILENAME, SELECTED_TAGS_FILENAME,
                                      read_dataset_info, split_paths, write_dataset_info)
from sw_zoo.data.pipeline import (EvalDataset, make_eval_dataset, make_train_dataset,
                                  process_slice_indices)
from sw_zoo.data.records import SCHEMA_VERSION, decode_image, decode_record, encode_record
from sw_zoo.data.shard_writer import ShardWriter
from sw_zoo.data.vocab import Tag, TagVocab, read_selected_tags, write_selected_tags
