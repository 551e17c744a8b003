"""The Python API (virtio_sim/orchestration/api.py) and docs/api.md taken at its word."""
