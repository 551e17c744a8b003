"""What ``--target`` names, in every campaign: ``KIND:NAME[,key=value...]``.

Conformance (``host:virtio-blk-pci,serial=x``, ``qemu:virtio-rng``, ``driver:linux-6.1,
device=blk``) and attacks (``host:blk/pci-modern/packed+drop``, ``driver:linux-6.1``,
``wire``) name what they run the same way: a kind, a colon, a name, and QEMU-style
``-device`` properties. The kinds, what their name means and which properties they take
stay with each campaign; the text is read here, strictly: a target that does not parse is
a usage error (exit 2), never a run that silently checks something else. The matrix has
no target text: its targets are a matrix file's axes (matrix/select.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


class TargetTextError(ValueError):
    """The target text cannot be read; one line for the user."""


@dataclass(frozen=True)
class TargetText:
    kind: str
    name: str
    props: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        tail = "".join(f",{k}={v}" for k, v in self.props.items())
        return f"{self.kind}:{self.name}{tail}" if self.name else self.kind


def expected(kinds: Mapping[str, str], bare: tuple[str, ...] = ()) -> str:
    """``host:DEVICE, qemu:DEVICE or driver:PROFILE`` (the kinds with what names them)."""
    forms = [f"{k}:{what}" for k, what in kinds.items()] + list(bare)
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def parse_target_text(
    text: str,
    kinds: Mapping[str, str],
    *,
    bare: tuple[str, ...] = (),
    error: type[ValueError] = TargetTextError,
) -> TargetText:
    """``text`` as KIND:NAME[,key=value...]; ``kinds`` maps each kind to what its name is
    (DEVICE, PROFILE), ``bare`` lists kinds written alone (``wire``). Raises ``error``."""
    if text in bare:
        return TargetText(text, "")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in kinds:
        raise error(f"target {text!r}: expected {expected(kinds, bare)}")
    parts = [p.strip() for p in rest.split(",")]
    name = parts[0]
    if not name:
        raise error(f"target {text!r}: no {kinds[kind].lower()} named")
    props: dict[str, str] = {}
    for p in parts[1:]:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise error(f"target {text!r}: property {p!r} is not key=value")
        if key in props:
            raise error(f"target {text!r}: property {key!r} given twice")
        props[key] = value
    return TargetText(kind, name, props)
