"""The transports, both sides: virtio-mmio (v1, v2) and virtio-pci (host function, guest enumeration,
legacy byte order)."""
