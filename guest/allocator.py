"""A guest page allocator for rings and DMA buffers.

The guest kernel owns its RAM; this hands out page-granular, aligned runs from a window
of it with first-fit over a sorted free list, merging neighbours on free. Double frees
and frees of unknown addresses are errors (a driver bug should be loud).
"""

from __future__ import annotations

import bisect

from virtio_sim.layouts import align_up

PAGE_SIZE = 4096


class OutOfGuestMemory(Exception):
    pass


class PageAllocator:
    def __init__(self, start: int, end: int, page_size: int = PAGE_SIZE) -> None:
        start = align_up(start, page_size)
        if end <= start:
            raise ValueError(f"empty allocator window [{start:#x}, {end:#x})")
        self.page_size = page_size
        self.start = start
        self.end = end
        self._free: list[tuple[int, int]] = [(start, end - start)]  # (addr, size), sorted
        self._used: dict[int, int] = {}
        #: every range ever handed out, merged: what a device may legitimately have been
        #: given (a write elsewhere is a write to memory the driver never lent it)
        self.ever: list[list[int]] = []

    def alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        if size <= 0:
            raise ValueError("allocation size must be positive")
        size = align_up(size, self.page_size)
        align = max(align, self.page_size)
        for i, (addr, run) in enumerate(self._free):
            start = align_up(addr, align)
            waste = start - addr
            if waste + size <= run:
                pieces = []
                if waste:
                    pieces.append((addr, waste))
                if run - waste - size:
                    pieces.append((start + size, run - waste - size))
                self._free[i : i + 1] = pieces
                self._used[start] = size
                self._remember(start, start + size)
                return start
        raise OutOfGuestMemory(f"no {size}-byte run (align {align:#x}) left in guest memory")

    def _remember(self, start: int, end: int) -> None:
        last = self.ever[-1] if self.ever else None
        if last is not None and last[0] <= end and start <= last[1]:
            last[0], last[1] = min(last[0], start), max(last[1], end)
            return
        for r in self.ever:
            if r[0] <= end and start <= r[1]:
                r[0], r[1] = min(r[0], start), max(r[1], end)
                return
        self.ever.append([start, end])

    def free(self, addr: int) -> None:
        size = self._used.pop(addr, None)
        if size is None:
            raise ValueError(f"free of {addr:#x}, which is not allocated")
        # The free list is kept sorted and merged: put the run in its place and merge it
        # with the neighbours it touches (what sorting and merging the whole list gives).
        free = self._free
        i = bisect.bisect_left(free, (addr, size))
        if i < len(free) and addr + size == free[i][0]:
            size += free[i][1]
            del free[i]
        if i and free[i - 1][0] + free[i - 1][1] == addr:
            addr = free[i - 1][0]
            size += free[i - 1][1]
            i -= 1
            del free[i]
        free.insert(i, (addr, size))

    @property
    def bytes_free(self) -> int:
        return sum(n for _, n in self._free)
