"""The embedded mode: host and guest in one process (virtio_sim/orchestration/embedded.py,
direct_link.py)."""
