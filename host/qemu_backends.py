"""QEMU's backend options: ``-drive``, ``-netdev``, ``-chardev``, and the device
properties that name them (``drive=ID``, ``netdev=ID``, ``chardev=ID``).

What each maps to here:

- ``-drive file=PATH,if=none,id=ID[,format=raw][,readonly=on]``: a raw image; only
  ``if=none`` (attach it with ``-device virtio-blk-...,drive=ID``) and raw images.
- ``-netdev hubport,id=ID,hubid=N``: QEMU's hub; here the learning switch ``hubN`` that
  every NIC on that hub shares (``x-backend=switch:hubN``).
- ``-chardev file,id=ID,path=PATH`` / ``-chardev stdio,id=ID``:
  the console of a virtio-serial device (``chardev=ID`` on the device: QEMU puts it on
  the ``virtconsole`` child device instead).

``drive=`` also takes an image path directly (ours: QEMU takes only an id or a block node
name); a bare name that no ``-drive`` defines is refused with QEMU's wording.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from virtio_sim.host.devices.base import PropertyError


@dataclass
class Backends:
    drives: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (path, readonly)
    netdevs: dict[str, str] = field(default_factory=dict)  # id -> x-backend value
    chardevs: dict[str, str] = field(default_factory=dict)  # id -> x-console value

    def ids(self) -> set[str]:
        return set(self.drives) | set(self.netdevs) | set(self.chardevs)


def _options(option: str, text: str, *, first_is_type: bool) -> tuple[str, dict[str, str]]:
    parts = text.split(",")
    kind = parts.pop(0) if first_is_type else ""
    out: dict[str, str] = {}
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq:
            raise PropertyError(f"-{option} {text}: Invalid parameter '{key}'")
        out[key] = value
    return kind, out


def _id(option: str, text: str, opts: dict[str, str], taken: set[str]) -> str:
    ident = opts.pop("id", "")
    if not ident:
        raise PropertyError(f"-{option} {text}: Parameter 'id' is missing")
    if ident in taken:
        raise PropertyError(f"-{option} {text}: Duplicate ID '{ident}' for {option}")
    return ident


def add_drive(b: Backends, text: str) -> None:
    _, opts = _options("drive", text, first_is_type=False)
    ident = _id("drive", text, opts, b.ids())
    path = opts.pop("file", "")
    if not path:
        raise PropertyError(f"-drive {text}: Parameter 'file' is missing")
    if opts.pop("if", "ide") != "none":
        raise PropertyError(
            f"-drive {text}: only if=none here (attach it with -device virtio-blk-...,drive=ID)"
        )
    fmt = opts.pop("format", "raw")
    if fmt != "raw":
        raise PropertyError(f"-drive {text}: format={fmt}: only raw images here")
    readonly = opts.pop("readonly", "off") in ("on", "true", "yes")
    if opts:
        raise PropertyError(f"-drive {text}: Invalid parameter '{next(iter(opts))}'")
    b.drives[ident] = (path, readonly)


def add_netdev(b: Backends, text: str) -> None:
    kind, opts = _options("netdev", text, first_is_type=True)
    ident = _id("netdev", text, opts, b.ids())
    if kind != "hubport":
        raise PropertyError(f"-netdev {text}: netdev type '{kind}' is not available here (hubport is)")
    hub = opts.pop("hubid", "")
    if not hub.isdigit():
        raise PropertyError(f"-netdev {text}: Parameter 'hubid' expects an integer")
    if opts:
        raise PropertyError(f"-netdev {text}: Invalid parameter '{next(iter(opts))}'")
    b.netdevs[ident] = f"switch:hub{int(hub)}"


def add_chardev(b: Backends, text: str) -> None:
    kind, opts = _options("chardev", text, first_is_type=True)
    ident = _id("chardev", text, opts, b.ids())
    if kind == "file":
        path = opts.pop("path", "")
        if not path:
            raise PropertyError(f"-chardev {text}: Parameter 'path' is missing")
        spec = f"file:{path}"
    elif kind == "stdio":
        spec = "stdio"
    else:
        raise PropertyError(f"-chardev {text}: chardev type '{kind}' is not available here (file|stdio)")
    if opts:
        raise PropertyError(f"-chardev {text}: Invalid parameter '{next(iter(opts))}'")
    b.chardevs[ident] = spec


def resolve(driver: str, model: str, props: dict[str, str], b: Backends) -> None:
    """Replace ``drive=`` / ``netdev=`` / ``chardev=`` IDs by what they name."""
    drive = props.get("drive")
    if drive is not None:
        if drive in b.drives:
            path, readonly = b.drives[drive]
            props["drive"] = path
            if readonly:
                props.setdefault("readonly", "on")
        elif not os.path.exists(drive) and not any(c in drive for c in "/."):
            # a bare name is an id (QEMU's syntax); a path is opened, or refused, by the model
            raise PropertyError(f"Property '{model}.drive' can't find value '{drive}'")
    for prop, table, target in (("netdev", b.netdevs, "x-backend"), ("chardev", b.chardevs, "x-console")):
        ident = props.pop(prop, None)
        if ident is None:
            continue
        if ident not in table:
            raise PropertyError(f"Property '{driver}.{prop}' can't find value '{ident}'")
        props[target] = table[ident]
