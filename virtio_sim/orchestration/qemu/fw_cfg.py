"""QEMU's fw_cfg device read over qtest, and the ACPI table loader firmware runs.

QEMU builds its ACPI tables itself and hands them to firmware through fw_cfg: the blobs
``etc/acpi/rsdp`` and ``etc/acpi/tables``, plus ``etc/table-loader``, a list of commands
saying where each blob goes (ALLOCATE), which pointers inside a blob must be patched with
another blob's final address (ADD_POINTER), and which checksums to fix up afterwards
(ADD_CHECKSUM). SeaBIOS and EDK2 run those commands; under qtest there is no firmware, so
:func:`link_tables` runs them here and :func:`install_tables` writes the result into the
guest's RAM, where our guest finds the RSDP the way Linux does.

Everything read from QEMU is checked: a loader command naming an unknown file, a pointer
or checksum range outside its blob, or an allocation that does not fit the firmware
window is a :class:`FwCfgError`, never an IndexError or a write somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtio_sim.layouts import (
    FW_CFG_DMA_ACCESS_SIZE,
    FW_CFG_FILE_SIZE,
    FW_CFG_LOADER_ENTRY_SIZE,
    FwCfgDmaAccess,
    FwCfgFile,
    FwCfgLoaderAddChecksum,
    FwCfgLoaderAddPointer,
    FwCfgLoaderAllocate,
    FwCfgLoaderEntry,
)
from virtio_sim.orchestration.qemu.qtest import QtestClient
from virtio_sim.spec import load_toml

_FW: dict[str, Any] = load_toml("fw_cfg.toml")
SELECTOR = _FW["selectors"]
LOADER = _FW["loader"]
DMA = _FW["dma"]
FILES = _FW["files"]
COUNT_SIZE = 4  # the file directory's big-endian record count
POINTER_SIZES = (1, 2, 4, 8)
MAX_FILES = 0x1000  # fw_cfg selectors are 16 bits; QEMU 7.2 has a few dozen files at most
WIDE_READ = 8
ID_SIZE = 4


class FwCfgError(Exception):
    """fw_cfg returned something a firmware could not use."""


class FwCfgPort(Protocol):
    """The selector/data register pair of one machine's fw_cfg, and its DMA doorbell."""

    client: QtestClient

    def select(self, key: int) -> None: ...

    def read(self, length: int) -> bytes: ...

    def start_dma(self, address: int) -> None:
        """Write the guest-physical address of an FWCfgDmaAccess (the transfer runs now)."""


class X86FwCfgPort:
    """fw_cfg on x86 (q35, microvm): I/O ports, one byte per data read."""

    def __init__(self, client: QtestClient) -> None:
        self.client = client
        self.selector_port: int = _FW["x86"]["selector_port"]
        self.data_port: int = _FW["x86"]["data_port"]
        self.dma_port: int = _FW["x86"]["dma_port"]

    def select(self, key: int) -> None:
        self.client.pio_write(self.selector_port, 2, key)

    def read(self, length: int) -> bytes:
        return bytes(self.client.pio_read(self.data_port, 1) for _ in range(length))

    def start_dma(self, address: int) -> None:
        # Big-endian register, written as two 32-bit halves; the low half starts it.
        be = address.to_bytes(8, "big")
        self.client.pio_write(self.dma_port, 4, int.from_bytes(be[:4], "little"))
        self.client.pio_write(self.dma_port + 4, 4, int.from_bytes(be[4:], "little"))


class ArmVirtFwCfgPort:
    """fw_cfg on arm ``virt``: MMIO, the data register yields up to 8 stream bytes per read.

    QEMU declares the registers big-endian, which makes a wide data read return the
    stream's bytes in memory order: a little-endian CPU (and qtest) sees them as an
    integer whose little-endian bytes are the stream.
    """

    def __init__(self, client: QtestClient, base: int | None = None) -> None:
        self.client = client
        base = _FW["arm_virt"]["base"] if base is None else base
        self.data: int = base + _FW["arm_virt"]["data_offset"]
        self.selector: int = base + _FW["arm_virt"]["selector_offset"]
        self.dma: int = base + _FW["arm_virt"]["dma_offset"]

    def select(self, key: int) -> None:
        self.client.write(self.selector, 2, int.from_bytes(key.to_bytes(2, "big"), "little"))

    def read(self, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            width = WIDE_READ if length - len(out) >= WIDE_READ else 1
            out += self.client.read(self.data, width).to_bytes(width, "little")
        return bytes(out)

    def start_dma(self, address: int) -> None:
        self.client.write(self.dma, 8, int.from_bytes(address.to_bytes(8, "big"), "little"))


@dataclass(frozen=True)
class FwCfgFileEntry:
    name: str
    select: int
    size: int


class FwCfg:
    """The fw_cfg file interface over one :class:`FwCfgPort`.

    With a ``dma_window`` (a guest-physical range of RAM nobody uses yet) files are read by
    DMA when QEMU offers it, as SeaBIOS does: byte reads of a 128 KiB table blob would be
    128 Ki qtest round trips.
    """

    def __init__(self, port: FwCfgPort, dma_window: tuple[int, int] | None = None) -> None:
        self.port = port
        self.dma_window = dma_window
        self._files: dict[str, FwCfgFileEntry] | None = None
        self._dma: bool | None = None

    def has_dma(self) -> bool:
        if self._dma is None:
            self.port.select(SELECTOR["id"])
            self._dma = bool(int.from_bytes(self.port.read(ID_SIZE), "little") & DMA["id_dma"])
        return self._dma

    def _dma_read(self, entry: FwCfgFileEntry, window: tuple[int, int]) -> bytes:
        start, end = window
        data_at = start + FW_CFG_DMA_ACCESS_SIZE
        if data_at + entry.size > end:
            raise FwCfgError(f"{entry.name!r} ({entry.size} bytes) does not fit the DMA window")
        control = entry.select << DMA["select_shift"] | DMA["ctl_select"] | DMA["ctl_read"]
        access = FwCfgDmaAccess.build({"control": control, "length": entry.size, "address": data_at})
        client = self.port.client
        client.memwrite(start, access)
        self.port.start_dma(start)
        done = FwCfgDmaAccess.parse(client.memread(start, FW_CFG_DMA_ACCESS_SIZE))
        if done.control:  # QEMU clears it on success, sets the error bit otherwise
            raise FwCfgError(f"fw_cfg DMA read of {entry.name!r} failed (control {done.control:#x})")
        return client.memread(data_at, entry.size)

    def signature(self) -> bytes:
        self.port.select(SELECTOR["signature"])
        return self.port.read(len(SELECTOR["signature_bytes"]))

    def files(self) -> dict[str, FwCfgFileEntry]:
        if self._files is None:
            if self.signature() != SELECTOR["signature_bytes"].encode():
                raise FwCfgError("no fw_cfg device answers with the QEMU signature")
            self.port.select(SELECTOR["file_dir"])
            count = int.from_bytes(self.port.read(COUNT_SIZE), "big")
            if count > MAX_FILES:
                raise FwCfgError(f"fw_cfg file directory claims {count} files")
            files = {}
            for _ in range(count):
                rec = FwCfgFile.parse(self.port.read(FW_CFG_FILE_SIZE))
                files[rec.name] = FwCfgFileEntry(rec.name, rec.select, rec.size)
            self._files = files
        return self._files

    def read_file(self, name: str) -> bytes:
        entry = self.files().get(name)
        if entry is None:
            raise FwCfgError(f"fw_cfg has no file {name!r}")
        if self.dma_window is not None and self.has_dma():
            return self._dma_read(entry, self.dma_window)
        self.port.select(entry.select)
        return self.port.read(entry.size)


# --------------------------------------------------------------------------- the loader


@dataclass
class LinkedTables:
    """The ACPI blobs at their final guest-physical addresses, pointers and checksums fixed."""

    blobs: dict[str, bytearray] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # commands that need a writable fw_cfg

    @property
    def rsdp_address(self) -> int:
        try:
            return self.addresses[FILES["rsdp"]]
        except KeyError:
            raise FwCfgError(f"the table loader never allocated {FILES['rsdp']!r}") from None


Placer = Callable[[str, int, int, int], int]
"""``place(name, size, align, zone) -> address`` picks where a blob goes."""


def _name(text: str) -> str:
    return text.rstrip("\0")


def link_tables(files: Mapping[str, bytes], loader: bytes, place: Placer) -> LinkedTables:
    """Run QEMU's table-loader commands over ``files`` (blob name -> contents)."""
    if len(loader) % FW_CFG_LOADER_ENTRY_SIZE:
        raise FwCfgError(
            f"table loader is {len(loader)} bytes, not whole {FW_CFG_LOADER_ENTRY_SIZE}-byte commands"
        )
    out = LinkedTables()

    def blob(name: str, why: str) -> bytearray:
        if name not in out.blobs:
            raise FwCfgError(f"table loader {why} {name!r}, which was not allocated")
        return out.blobs[name]

    for at in range(0, len(loader), FW_CFG_LOADER_ENTRY_SIZE):
        entry = FwCfgLoaderEntry.parse(loader[at : at + FW_CFG_LOADER_ENTRY_SIZE])
        if entry.command == LOADER["allocate"]:
            cmd = FwCfgLoaderAllocate.parse(entry.body)
            name = _name(cmd.file)
            if name not in files:
                raise FwCfgError(f"table loader allocates {name!r}, which fw_cfg does not have")
            if name in out.blobs:
                raise FwCfgError(f"table loader allocates {name!r} twice")
            if cmd.align == 0 or cmd.align & (cmd.align - 1):
                raise FwCfgError(f"table loader asks for alignment {cmd.align} for {name!r}")
            out.blobs[name] = bytearray(files[name])
            out.addresses[name] = place(name, len(files[name]), cmd.align, cmd.zone)
        elif entry.command == LOADER["add_pointer"]:
            ptr = FwCfgLoaderAddPointer.parse(entry.body)
            dest = blob(_name(ptr.dest_file), "patches a pointer in")
            src = _name(ptr.src_file)
            blob(src, "points into")
            if ptr.size not in POINTER_SIZES or ptr.offset + ptr.size > len(dest):
                raise FwCfgError(
                    f"table loader pointer of {ptr.size} bytes at {ptr.offset} is outside its blob"
                )
            end = ptr.offset + ptr.size
            value = int.from_bytes(dest[ptr.offset : end], "little") + out.addresses[src]
            dest[ptr.offset : end] = (value & ((1 << (8 * ptr.size)) - 1)).to_bytes(ptr.size, "little")
        elif entry.command == LOADER["add_checksum"]:
            ck = FwCfgLoaderAddChecksum.parse(entry.body)
            data = blob(_name(ck.file), "checksums")
            if ck.offset >= len(data) or ck.start + ck.length > len(data):
                raise FwCfgError(f"table loader checksum range of {_name(ck.file)!r} is outside the blob")
            data[ck.offset] = (data[ck.offset] - sum(data[ck.start : ck.start + ck.length])) & 0xFF
        elif entry.command == LOADER["write_pointer"]:
            out.ignored.append("WRITE_POINTER (needs fw_cfg DMA writes; no table needs it here)")
        elif entry.command != 0:  # QEMU pads the loader with zeroed commands
            raise FwCfgError(f"table loader command {entry.command} is unknown")
    return out


class WindowPlacer:
    """Places blobs in a firmware window of guest RAM, each zone bottom-up.

    ``fseg`` is where SeaBIOS puts the RSDP on x86 (below 1 MiB, where Linux scans for
    it); ``high`` takes the rest. Both are (start, end) guest-physical ranges.
    """

    def __init__(self, high: tuple[int, int], fseg: tuple[int, int] | None = None) -> None:
        high_window = list(high)
        # Without a separate FSEG window both zones share one cursor (never overlap).
        self.windows = {
            LOADER["zone_high"]: high_window,
            LOADER["zone_fseg"]: list(fseg) if fseg else high_window,
        }

    def __call__(self, name: str, size: int, align: int, zone: int) -> int:
        window = self.windows.get(zone)
        if window is None:
            raise FwCfgError(f"table loader asks for unknown zone {zone} for {name!r}")
        addr = (window[0] + align - 1) & ~(align - 1)
        if addr + size > window[1]:
            raise FwCfgError(f"{name!r} ({size} bytes) does not fit the firmware window")
        window[0] = addr + size
        return addr


def read_acpi(fw: FwCfg, place: Placer) -> LinkedTables:
    """Read QEMU's ACPI blobs and loader from fw_cfg and link them."""
    files = fw.files()
    wanted = [name for name in files if name.startswith("etc/acpi/")]
    blobs = {name: fw.read_file(name) for name in wanted}
    return link_tables(blobs, fw.read_file(FILES["loader"]), place)


def install_tables(write: Callable[[int, bytes], None], linked: LinkedTables) -> None:
    """Write every linked blob to guest RAM at its address (what firmware leaves behind)."""
    for name, data in linked.blobs.items():
        write(linked.addresses[name], bytes(data))


def fw_cfg_for(client: QtestClient, arch: str, dma_window: tuple[int, int] | None = None) -> FwCfg:
    """The fw_cfg device of a QEMU machine of ``arch`` (x86 ports or arm virt MMIO)."""
    if arch == "x86_64":
        return FwCfg(X86FwCfgPort(client), dma_window)
    if arch == "aarch64":
        return FwCfg(ArmVirtFwCfgPort(client), dma_window)
    raise FwCfgError(f"no fw_cfg access for architecture {arch!r}")
