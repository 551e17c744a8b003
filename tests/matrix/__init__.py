"""virtio_sim/matrix: planning, executors and deadlines, the command's output, the reports."""
