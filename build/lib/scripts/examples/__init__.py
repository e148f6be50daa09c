"""What shows the pipeline rather than being it: the digits demo (`make demo`), its training code,
and seeded weights for the example specs (`python -m scripts.examples.weights`)."""
