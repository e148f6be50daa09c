"""Serving-side code that travels inside every archive: the spec schema, the loading path and the
TorchServe handler. It imports only torch, PyYAML, TorchServe and `model_defs`, never `scripts`."""
