"""Data layer: record schema (`records`), tag vocabulary (`vocab`), dataset metadata
(`dataset_info`), shard writing (`shard_writer`), image decoding (`image_io`), inference
preprocessing (`preprocess`), training augmentation (`augment`, `augment_spec`, `mixing`,
`balance`) and grain pipelines (`pipeline`).

Import the module you need: this package imports nothing itself, so reading a vocabulary does
not pull in grain, OpenCV or jax.
"""
