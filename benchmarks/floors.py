"""Floors: the fastest plain-Python version of each job, measured in the same run.

Every figure of the benchmark suite is reported as a ratio against one of these, because
absolute numbers on shared 2-core machines mean little from one run to the next.
In-process loops are timed in process CPU time (other load on the machine does not count),
anything with a second process or an event loop in wall time; each figure says which.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import trio

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
ELEM = struct.Struct("<II")


def split_ring_floor(chains: int, batch: int, qsize: int = 256) -> float:
    """A minimal split ring on a bytearray, no checks: driver adds, device pops and pushes."""
    desc_off, avail_off, used_off = 0, 16 * qsize, 16 * qsize + 6 + 2 * qsize + 2
    mem = bytearray(used_off + 6 + 8 * qsize + 4096)
    avail_idx = used_idx = last_avail = last_used = 0
    mask = qsize - 1
    done = 0
    start = time.process_time()
    while done < chains:
        n = min(batch, chains - done, qsize)
        for i in range(n):  # driver: one descriptor per chain
            d = (avail_idx + i) & mask
            DESC.pack_into(mem, desc_off + 16 * d, 0x100000 + 4096 * d, 64, 2, 0)
            U16.pack_into(mem, avail_off + 4 + 2 * ((avail_idx + i) & mask), d)
        avail_idx = (avail_idx + n) & 0xFFFF
        U16.pack_into(mem, avail_off + 2, avail_idx)
        end = U16.unpack_from(mem, avail_off + 2)[0]  # device
        while last_avail != end:
            head = U16.unpack_from(mem, avail_off + 4 + 2 * (last_avail & mask))[0]
            _addr, length, _flags, _next = DESC.unpack_from(mem, desc_off + 16 * head)
            ELEM.pack_into(mem, used_off + 4 + 8 * (used_idx & mask), head, length)
            used_idx = (used_idx + 1) & 0xFFFF
            last_avail = (last_avail + 1) & 0xFFFF
        U16.pack_into(mem, used_off + 2, used_idx)
        uend = U16.unpack_from(mem, used_off + 2)[0]  # driver reaps
        while last_used != uend:
            ELEM.unpack_from(mem, used_off + 4 + 8 * (last_used & mask))
            last_used = (last_used + 1) & 0xFFFF
        done += n
    return chains / (time.process_time() - start)


def memcpy_floor(size: int, total: int) -> float:
    """Bytes/s of copying ``size``-byte blocks between bytearrays (what any data path must do)."""
    src = bytes(size)
    dst = bytearray(size * 2)
    rounds = max(1, total // size)
    start = time.process_time()
    for _ in range(rounds):
        dst[:size] = src
        bytes(dst[:size])
    return rounds * size / (time.process_time() - start)


def channel_pingpong_floor(rounds: int) -> float:
    """Seconds per round trip over a pair of trio memory channels (embedded link floor)."""

    async def main() -> float:
        a_tx, a_rx = trio.open_memory_channel[bytes](1)
        b_tx, b_rx = trio.open_memory_channel[bytes](1)

        async def echo() -> None:
            async for m in a_rx:
                await b_tx.send(m)

        async with trio.open_nursery() as n:
            n.start_soon(echo)
            start = time.perf_counter()
            for _ in range(rounds):
                await a_tx.send(b"x" * 32)
                await b_rx.receive()
            elapsed = time.perf_counter() - start
            n.cancel_scope.cancel()
        return elapsed / rounds

    return trio.run(main)


def socket_pingpong_floor(rounds: int) -> float:
    """Seconds (wall) per one-byte round trip with a forked echo process over a Unix
    socket pair: the cost of one kick and one interrupt between two processes."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            a.close()
            while (m := b.recv(1)) != b"q":
                b.sendall(m)
        finally:
            os._exit(0)
    b.close()
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            a.sendall(b"k")
            a.recv(1)
        elapsed = time.perf_counter() - start
        a.sendall(b"q")
        return elapsed / rounds
    finally:
        a.close()
        os.waitpid(pid, 0)
