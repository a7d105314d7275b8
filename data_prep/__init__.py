"""Command-line converters that turn image sources into sw_zoo datasets (ArrayRecord shards +
selected_tags.csv + dataset.json). `python -m data_prep SOURCE_KIND ...` converts folders,
manifests, Danbooru metadata, the fire-eggs SQLite database and tfds directories (see
data_prep/convert.py); `python -m data_prep.synthetic` builds the built-in dataset."""
