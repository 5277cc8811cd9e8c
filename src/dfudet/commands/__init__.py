"""The batch commands behind the CLI: evaluate (and its report), tune, predict, track and the photo lists they read.

They drive the runtime (`dfudet.inference`) over folders and splits and write files; the runtime never imports them
(tests/test_import_isolation.py), so serve and an ONNX-only install need none of this.
"""
