"""TOML data files, parsed once and kept as marshal data until the file changes.

Every command reads specs/*.toml at import and a run reads its driver profile: about
fifteen files whose parsing (plus importing :mod:`tomllib` and the regexes it compiles)
was a tenth of ``virtio-sim run``'s start-up CPU. Python caches compiled modules the same
way: :func:`load` keeps the parsed table in a cache file stamped with the source's
modification time and size (what a ``.pyc`` records), and parses the TOML again only
when the stamp, the path or the cache file does not match. Reading the cache is a
``marshal.loads`` (a fifth of a millisecond for all the spec files).

The cache lives in ``$VIRTIO_SIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/virtio-sim``, else
``~/.cache/virtio-sim``; ``VIRTIO_SIM_CACHE_DIR=`` (empty) turns it off. It is the user's
own folder, trusted as their ``__pycache__`` is. Only the package's own data is cached
(the files below :data:`PACKAGE_DATA`: specs and the shipped profiles), so the cache holds
a bounded set of files; a profile or spec folder given elsewhere is parsed every time. A
cache that cannot be read or written is ignored: the file is parsed as before. Tables
marshal cannot hold (TOML dates) are not cached.
"""

from __future__ import annotations

import marshal
import os
import zlib
from typing import Any

#: bumped when the cache format changes; part of every cache file's name
FORMAT = 1
#: the folder whose files are cached: the package's specs (a symlink in a checkout)
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs") + os.sep


def cache_dir() -> str | None:
    """The cache folder, or None when caching is off."""
    explicit = os.environ.get("VIRTIO_SIM_CACHE_DIR")
    if explicit is not None:
        return explicit or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "virtio-sim")


def _cache_file(folder: str, path: str) -> str:
    name = os.path.basename(path)
    return os.path.join(folder, f"{name}.{zlib.crc32(path.encode()):08x}.v{FORMAT}.marshal")


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file at ``path`` (as :func:`tomllib.load` returns it).

    Raises what opening and parsing the file raises: OSError (FileNotFoundError for a
    missing file) and :class:`tomllib.TOMLDecodeError` (a ValueError).
    """
    source = os.path.abspath(path)
    st = os.stat(source)
    stamp = (source, st.st_mtime_ns, st.st_size)
    folder = cache_dir() if source.startswith(PACKAGE_DATA) else None
    cached = _cache_file(folder, source) if folder else None
    if cached is not None:
        try:
            with open(cached, "rb") as f:
                seen, data = marshal.loads(f.read())
            if tuple(seen) == stamp and isinstance(data, dict):
                return data
        except (OSError, EOFError, ValueError, TypeError):
            pass  # no cache yet, or an unreadable one: parse the file
    import tomllib  # only on a miss: a warm start never imports the parser

    with open(source, "rb") as f:
        data = tomllib.load(f)
    if cached is not None:
        _store(cached, stamp, data)
    return data


def _store(cached: str, stamp: tuple[str, int, int], data: dict[str, Any]) -> None:
    """Write the cache file atomically (a reader never sees half of one); any failure
    (read-only home, full disk, a date marshal cannot hold) leaves no cache."""
    try:
        blob = marshal.dumps((stamp, data))
    except ValueError:
        return
    tmp = f"{cached}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, cached)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
