"""Public fault and evidence hooks of a ring.

Why: checkers, attacks and tests make a ring misbehave on purpose (a device that
publishes the used index before the element, a driver that builds a loop) or watch it.
They do that by giving the ring a hooks object (``ring.hooks = MyHooks()``), never by
overriding private methods or swapping ``__class__``. A ring whose ``hooks`` is not None
takes its general path for every call that a hook covers, so no inline path can go
around a hook; a ring without hooks pays one ``is None`` test.

The defaults are the ring's own behaviour: a subclass overrides what it needs and calls
``super()`` (or the ring's public primitives) for the rest.
"""

from __future__ import annotations

from typing import Any


class DeviceHooks:
    """Hooks of a device ring (split or packed)."""

    def write_used(self, ring: Any, head: int, written: int, count: int) -> None:
        """Publish one used entry for ``head`` covering ``count`` buffers (split) or ring
        descriptors (packed). The ring's own :meth:`write_used` writes the element, then
        the index (split) or len and id, then the flags (packed)."""
        ring.write_used(head, written, count)

    def needs_interrupt(self, ring: Any, wanted: bool) -> bool:
        """The interrupt decision; ``wanted`` is what the driver's suppression asked."""
        return wanted


class DriverHooks:
    """Hooks of a driver ring (split or packed)."""

    def take(self, ring: Any) -> int:
        """The next free descriptor (split) or buffer id (packed) a chain gets."""
        value: int = ring.next_free()
        return value

    def use_indirect(self, ring: Any, asked: bool | None) -> bool | None:
        """Whether add() builds an indirect table (None: the ring decides)."""
        return asked

    def added(self, ring: Any, head: int) -> None:
        """After add() made the chain at ``head`` available (the ring's memory is the
        hook's to edit: a broken driver rewrites what it just published)."""

    def kick(self, ring: Any, wanted: bool) -> bool:
        """The kick decision; ``wanted`` is what the device's suppression asked."""
        return wanted


__all__ = ["DeviceHooks", "DriverHooks"]
