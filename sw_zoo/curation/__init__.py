"""Curating datasets with a trained tagger: label issues (`label_issues`, confident learning) and
their report (`missing_tags_report`) from a split's labels (`split_labels`) and a model's
predictions over it (`predictions`), cross-validation folds (`folds`), and image / tag search
over embeddings (`embedding_index`)."""
