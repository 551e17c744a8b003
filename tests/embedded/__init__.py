"""The embedded mode: host and guest in one process (virtio_sim/embedded.py, direct_link.py)."""
