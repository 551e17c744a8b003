"""Host and guest as separate processes (virtio_sim/processes.py, host/process.py, guest/process.py)."""
