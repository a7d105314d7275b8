"""Using trained taggers: model bundles (`bundle`), `Tagger`, `load_pretrained` (`pretrained`),
caption files (`captions`), ONNX export (`onnx_export`), a run or checkpoint resolved to a model
(`model_source`) and runs -> bundles (`run_bundle`). `sw_zoo.load_pretrained` / `sw_zoo.Tagger`
are the public entry points."""
