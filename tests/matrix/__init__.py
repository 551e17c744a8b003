"""virtio_sim/orchestration/matrix: planning, executors and deadlines, the command's output, the
reports."""
