"""The host side, installed as ``virtio_sim.host`` (docs/architecture.md).

The wheel has no top-level ``host`` package (a name that collides with users' modules);
in a checkout this folder is reached through the ``virtio_sim/host`` symlink. Imported as
plain ``host`` every module would load a second time under a second name (two copies of
each class, isinstance failing between them), so that is refused here, loudly.
"""

if __name__ != "virtio_sim.host":
    raise ImportError(
        f"import virtio_sim.host, not {__name__}: host/ is installed as virtio_sim.host"
        " (to convert: sed -i -E 's/^( *from )(host|guest)([. ])/\\1virtio_sim.\\2\\3/' FILE.py)"
    )
