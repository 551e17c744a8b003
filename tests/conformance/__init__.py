"""virtio_sim/orchestration/conformance: catalogue, findings, device and driver checkers, seeded
defects and mutations."""
