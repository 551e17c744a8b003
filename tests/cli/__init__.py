"""The virtio-sim command as a user runs it (virtio_sim/cli.py, compat_cli.py)."""
