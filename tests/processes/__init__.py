"""Host and guest as separate processes (virtio_sim/orchestration/processes.py, host/process.py,
guest/process.py)."""
