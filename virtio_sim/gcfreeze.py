"""Start-up objects are never garbage: move them out of the cyclic collector's way.

CPython's cyclic GC walks every tracked object at each full (generation-2) collection.
A process that has imported the host and guest stack holds some 80,000 such objects
(modules, functions, classes, the spec tables), none of which will ever be freed, and
the per-chain objects of a busy ring (chains, segment lists, in-flight records) trigger
full collections often: with the whole package imported, packed batch calls at batch 256
ran 1.25x faster with those objects frozen (docs/benchmarks.md, "Cyclic GC"). So the
entry points that run many requests or many cells (``virtio-sim run``, ``host``,
``guest``, the matrix workers, the dask cell processes, the benchmarks) call
:func:`freeze_startup` once their imports are done; the collector keeps running for
everything allocated afterwards.
"""

from __future__ import annotations

import gc


def freeze_startup() -> None:
    """Everything allocated so far goes to the permanent generation (``gc.freeze``)."""
    gc.freeze()
