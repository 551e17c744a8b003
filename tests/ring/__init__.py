"""virtio_sim/ring: split and packed queues, the chain walker, batch calls, the memory paths, ring
features end to end."""
