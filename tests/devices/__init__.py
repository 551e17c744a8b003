"""virtio_sim/devices (the device-kind registry) and the device models of host/devices, each with its
guest driver."""
