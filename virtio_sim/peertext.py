"""Text from a peer or a user, made safe to show: never markup, never terminal control, bounded.

An ERROR frame's message, a drive path, a profile name or a cell's detail is data. Handed
to rich as a string it is parsed as markup: ``[/x]`` raised MarkupError and crashed the
CLI, and rich's highlighter took over 70 s on a 60,000-character message (its regexes
are quadratic on one long run of word characters). So every such string is shown through
:func:`plain` (a rich Text: no markup, no highlighter), after :func:`peer_text` cut it to
the wire protocol's bound on ERROR messages (docs/wire-protocol.md: "at most 4000
characters"; specs/limits.toml [wire] max_error_chars) and replaced control characters
(an ESC from a hostile peer would otherwise drive the user's terminal) by visible escapes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from virtio_sim.spec import LIMITS

if TYPE_CHECKING:
    from rich.text import Text

#: characters of peer text kept, on receive (ERROR frames) and on render
MAX_PEER_TEXT = LIMITS.wire.max_error_chars

# C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F include CSI U+009B)
_NOTE = "... ({} more characters cut)"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def cap(text: str, limit: int = MAX_PEER_TEXT) -> str:
    """``text`` in at most ``limit`` characters; a longer one ends with a note of the cut."""
    if len(text) <= limit:
        return text
    room = limit - len(_NOTE.format(len(text)))  # the note never gets longer than this
    keep = max(0, room)
    return (text[:keep] + _NOTE.format(len(text) - keep))[:limit]


def peer_text(text: object, limit: int = MAX_PEER_TEXT) -> str:
    """``text`` capped at ``limit`` characters, control characters shown as ``\\xNN``."""
    s = cap(str(text), limit)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def plain(text: object, limit: int = MAX_PEER_TEXT, style: str = "") -> Text:
    """Peer or user text as a rich Text: printed literally, whatever brackets it holds."""
    from rich.text import Text  # here: the wire layer imports cap() and needs no rich

    return Text(peer_text(text, limit), style=style)
