"""virtio_sim/conformance: catalogue, findings, device and driver checkers, seeded defects and
mutations."""
