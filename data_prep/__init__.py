"""Command-line converters that turn image sources into sw_zoo datasets (ArrayRecord shards +
selected_tags.csv + dataset.json). `python -m data_prep.synthetic` builds the built-in one."""
