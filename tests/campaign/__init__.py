"""virtio_sim/orchestration/campaign: the shared deadline mechanism, report model and writers, outputs."""
