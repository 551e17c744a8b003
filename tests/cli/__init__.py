"""The virtio-sim command as a user runs it (virtio_sim/orchestration/cli.py, compat_cli.py)."""
