"""The guest side, installed as ``virtio_sim.guest`` (docs/architecture.md).

The wheel has no top-level ``guest`` package (a name that collides with users' modules);
in a checkout this folder is reached through the ``virtio_sim/guest`` symlink. Imported as
plain ``guest`` every module would load a second time under a second name (two copies of
each class, isinstance failing between them), so that is refused here, loudly.
"""

if __name__ != "virtio_sim.guest":
    raise ImportError(
        f"import virtio_sim.guest, not {__name__}: guest/ is installed as virtio_sim.guest"
        " (to convert: sed -i -E 's/^( *from )(host|guest)([. ])/\\1virtio_sim.\\2\\3/' FILE.py)"
    )
