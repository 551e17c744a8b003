"""Real peers: QEMU's own device models and the real Linux drivers, from Debian packages.

* :mod:`virtio_sim.orchestration.qemu.tools` finds qemu-system-* and a static busybox, and says how to
  install them when they are missing.
* :mod:`virtio_sim.orchestration.qemu.kernel` fetches the Debian kernel (apt-get download + dpkg -x)
  into a cache and keeps only what a boot needs.
* :mod:`virtio_sim.orchestration.qemu.initramfs` builds a busybox initramfs whose init loads the virtio
  modules, runs shell checks and prints markers on the serial console.
* :mod:`virtio_sim.orchestration.qemu.linux_vhost` boots that kernel in QEMU with our device models
  behind vhost-user (:mod:`host.vhost_user`) and collects both sides' evidence.
* :mod:`virtio_sim.orchestration.qemu.qtest` spawns QEMU under the qtest protocol; with
  :mod:`virtio_sim.orchestration.qemu.qtest_link` our guest stack drives QEMU's device models
  (:mod:`virtio_sim.orchestration.qemu.run` is ``virtio-sim run --device-backend qemu``).
"""
