"""The repository's own rules: layers, mypy/ruff, packaging, CI and README agreement, suite hygiene,
benchmark smoke."""
