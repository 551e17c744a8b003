"""The Python API (virtio_sim/api.py) and docs/api.md taken at its word."""
