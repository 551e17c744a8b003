"""host/ beyond the device models: the frame server, the host process (admission, DMA mode),
vhost-user, QEMU-style options."""
