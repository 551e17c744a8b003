"""virtio_sim/campaign: the shared deadline mechanism, report model and writers, outputs."""
