"""The orchestration layer: what runs host and guest together and judges them.

Embedded and two-process runs (embedded.py, direct_link.py, processes.py), the matrix,
attacks and conformance campaigns on one harness (campaign/), real peers (qemu/),
old-vs-new comparison (compat.py), the ``virtio-sim`` command (cli.py), the Python API
(api.py) and the pytest plugin. It may import every layer; nothing below it (the core of
virtio_sim/, host/, guest/) imports it (tests/project/test_layers.py). Empty on purpose:
importing a submodule loads only that.
"""
