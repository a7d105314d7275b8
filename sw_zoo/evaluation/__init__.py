"""Offline evaluation of a trained tagger (`sw-zoo eval`): where the model comes from
(`model_source`), the streaming pass (`runner`), metrics per category and per tag (`report`),
suggested thresholds (`thresholds`) and plots (`plots`)."""
