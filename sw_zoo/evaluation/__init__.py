"""Evaluation of a trained tagger: streamed metrics (`batch_stats` on device, `metrics` on the
host), the one evaluation pass the trainer and `sw-zoo eval` share (`evaluator`), per-category and
per-tag reports (`report`), suggested thresholds (`thresholds`), plots (`plots`) and the F1 vs
throughput Pareto selection (`pareto`)."""
