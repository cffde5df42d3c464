"""One module per importance criterion; each registers itself in ``compress.prune.CRITERIA``."""
