"""Real peers: QEMU's devices under qtest, real Linux drivers over vhost-user, DPDK's virtio-user
(marked qemu/tool)."""
