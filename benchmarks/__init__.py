"""On-demand benchmarks: ``python -m benchmarks`` (never part of the timed test suite)."""
