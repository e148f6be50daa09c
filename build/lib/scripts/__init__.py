"""The `mar` command line: build, verify and serve model archives with TorchServe."""
