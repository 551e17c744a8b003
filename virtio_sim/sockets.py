"""Frames over a socket between a host process and a guest process.

:class:`SocketFrameChannel` has the interface of :class:`~virtio_sim.wire.MemoryFrameChannel`
(``send``, ``receive``, ``send_raw``, ``aclose``) over a trio :class:`~trio.SocketStream`,
plus file-descriptor passing on Unix sockets (``send_with_fds`` / ``take_fd``), which is how
the host hands guest RAM to the guest at the handshake.

Reading a frame never trusts the peer: the 12-byte header is validated
(:func:`~virtio_sim.wire.decode_header`: magic, version, type, length limit, size of the
type) before the channel waits for the payload, a frame that has started must complete
within ``frame_timeout`` seconds, and an end of stream inside a frame is a truncated frame
(:class:`~virtio_sim.wire.WireError`), not a clean end of the connection.

Addresses are ``unix:PATH`` (or ``unix:`` for a fresh private directory), and
``tcp:HOST:PORT`` (``tcp::PORT`` means 127.0.0.1; IPv6 hosts in brackets). A Unix socket is
only ever created inside a directory that no other user can enter (mode 0700, owned by
us), with mode 0600 from the moment it exists.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass

import trio

from virtio_sim.wire import HEADER_SIZE, ErrorCode, Frame, SendStalledError, WireError, decode_header

FRAME_TIMEOUT = 5.0  # seconds a started frame may take to arrive completely
RECV_CHUNK = 1 << 16
MAX_PENDING_FDS = 4  # fds a peer may have in flight before it counts as hostile
LISTEN_BACKLOG = 16
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
SOCKET_NAME = "host.sock"


class AddressError(ValueError):
    """An address that cannot be parsed or used."""


@dataclass(frozen=True)
class UnixAddress:
    path: str | None  # None: the listener creates a private directory

    def __str__(self) -> str:
        return f"unix:{self.path or ''}"


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


Address = UnixAddress | TcpAddress
DEFAULT_TCP_HOST = "127.0.0.1"


def parse_address(text: str, *, listen: bool) -> Address:
    """``unix:PATH`` / ``tcp:HOST:PORT``; a listener may leave the path or port to us."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise AddressError(f"address {text!r} must be unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            if not listen:
                raise AddressError("unix: needs the socket path to connect to")
            return UnixAddress(None)
        if len(os.fsencode(rest)) > UNIX_PATH_MAX:
            raise AddressError(f"Unix socket path is longer than {UNIX_PATH_MAX} bytes: {rest}")
        return UnixAddress(rest)
    if rest.startswith("["):
        host, bracket, port_s = rest[1:].partition("]")
        if not bracket or not port_s.startswith(":"):
            raise AddressError(f"address {text!r}: expected tcp:[IPV6]:PORT")
        port_s = port_s[1:]
    else:
        host, colon, port_s = rest.rpartition(":")
        if not colon:
            raise AddressError(f"address {text!r}: expected tcp:HOST:PORT")
    try:
        port = int(port_s, 10)
    except ValueError:
        raise AddressError(f"address {text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 0xFFFF or (port == 0 and not listen):
        raise AddressError(f"address {text!r}: port {port} is out of range")
    return TcpAddress(host or DEFAULT_TCP_HOST, port)


# --------------------------------------------------------------------------- channel


class SocketFrameChannel:
    """One end of a host<->guest connection over a stream socket."""

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        accept_fds: bool = False,
        frame_timeout: float = FRAME_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.socket = stream.socket
        self.accept_fds = accept_fds
        self.frame_timeout = frame_timeout
        self._buf = bytearray()
        self._fds: list[int] = []
        self._send_lock = trio.Lock()
        self.frames_in = 0
        self.frames_out = 0

    @property
    def is_unix(self) -> bool:
        return bool(self.socket.family == socket.AF_UNIX)

    # -- sending ----------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        await self._send(frame.encode(), ())

    async def send_raw(self, raw: bytes) -> None:
        """Send bytes as they are (tests use this to inject malformed frames)."""
        await self._send(raw, ())

    async def send_with_fds(self, frame: Frame, fds: list[int]) -> None:
        """Send a frame with file descriptors attached (SCM_RIGHTS; Unix sockets only)."""
        if not self.is_unix:
            raise ValueError("file descriptors can only be passed over a Unix socket")
        await self._send(frame.encode(), fds)

    async def _send(self, raw: bytes, fds: list[int] | tuple[()]) -> None:
        """Send one frame; a peer that does not read bounds the wait, not our memory."""
        async with self._send_lock:
            with trio.move_on_after(self.frame_timeout) as scope:
                try:
                    if fds:
                        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                        sent = await self.socket.sendmsg([raw], anc)
                        if sent < len(raw):
                            await self.stream.send_all(raw[sent:])
                    else:
                        await self.stream.send_all(raw)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    raise trio.EndOfChannel(f"connection lost: {_why(e)}") from None
            if scope.cancelled_caught:
                why = f"the peer took no frame for {self.frame_timeout:g}s (it does not read)"
                raise SendStalledError(why)
            self.frames_out += 1

    # -- receiving --------------------------------------------------------------

    async def receive(self) -> Frame:
        """The next frame; trio.EndOfChannel when the peer closed between frames."""
        if not self._buf and not await self._more():
            raise trio.EndOfChannel("peer closed the connection")
        deadline = trio.current_time() + self.frame_timeout
        await self._need(HEADER_SIZE, deadline, "frame header")
        kind, seq, length = decode_header(bytes(self._buf[:HEADER_SIZE]))
        # The header is valid (length within MAX_PAYLOAD): only now wait for the payload.
        await self._need(HEADER_SIZE + length, deadline, f"{kind.name} payload")
        payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
        del self._buf[: HEADER_SIZE + length]
        self.frames_in += 1
        return Frame(kind, seq, payload)

    async def _need(self, n: int, deadline: float, what: str) -> None:
        while len(self._buf) < n:
            with trio.move_on_at(deadline) as scope:
                more = await self._more(n - len(self._buf))
            if scope.cancelled_caught:
                raise WireError(
                    f"{what} incomplete after {self.frame_timeout:g}s ({len(self._buf)} of {n} bytes)",
                    ErrorCode.TIMEOUT,
                )
            if not more:
                raise WireError(
                    f"truncated frame: connection closed after {len(self._buf)} of {n} bytes of the {what}"
                )

    async def _more(self, wanted: int = RECV_CHUNK) -> bool:
        """Append what the socket has (at most one chunk); False at end of stream."""
        size = max(1, min(wanted, RECV_CHUNK)) if self._buf else RECV_CHUNK
        try:
            if self.accept_fds:
                data = await self._recv_with_fds(size)
            else:
                data = await self.stream.receive_some(size)
        except (trio.BrokenResourceError, ConnectionError) as e:
            if not self._buf:
                raise trio.EndOfChannel(f"connection lost: {_why(e)}") from None
            return False
        except trio.ClosedResourceError:
            raise trio.EndOfChannel("channel closed") from None
        if not data:
            return False
        self._buf += data
        return True

    async def _recv_with_fds(self, size: int) -> bytes:
        anc_size = socket.CMSG_SPACE(MAX_PENDING_FDS * struct.calcsize("i"))
        data, ancdata, flags, _ = await self.socket.recvmsg(size, anc_size)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(self._fds) > MAX_PENDING_FDS:
            self._close_fds()
            raise WireError("peer sent more file descriptors than the protocol allows")
        return bytes(data)

    def take_buffered(self) -> bytes:
        """Bytes received and not yet framed (the caller takes them over with the
        connection, e.g. to another event loop: see :meth:`preload`)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def preload(self, data: bytes) -> None:
        """Bytes that arrived on this connection before this channel owned it."""
        self._buf[:0] = data

    def take_fd(self) -> int | None:
        """The oldest file descriptor received and not yet taken (the caller owns it)."""
        return self._fds.pop(0) if self._fds else None

    def _close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    async def aclose(self) -> None:
        self._close_fds()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.stream.aclose()

    def peer(self) -> str:
        """Who is on the other end, for log lines."""
        if self.is_unix:
            creds = peer_credentials(self.socket)
            return f"pid {creds[0]} uid {creds[1]}" if creds else "unix peer"
        try:
            host, port = self.socket.getpeername()[:2]
        except OSError:
            return "tcp peer"
        return f"{host}:{port}"


def _why(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__ or e
    if isinstance(cause, OSError) and cause.strerror:
        return str(cause.strerror)
    return str(cause) or type(cause).__name__


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a Unix-socket peer (SO_PEERCRED), or None where unavailable."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    fmt = "3i"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize(fmt))
    except OSError:
        return None
    pid, uid, gid = struct.unpack(fmt, raw)
    return pid, uid, gid


# --------------------------------------------------------------------------- connect


class ConnectError(OSError):
    """The host could not be reached."""


async def connect(addr: Address) -> trio.SocketStream:
    try:
        if isinstance(addr, UnixAddress):
            assert addr.path is not None
            return await trio.open_unix_socket(addr.path)
        return await trio.open_tcp_stream(addr.host, addr.port)
    except OSError as e:
        hint = " (is the host running?)" if isinstance(e, ConnectionRefusedError | FileNotFoundError) else ""
        raise ConnectError(f"cannot connect to {addr}: {e.strerror or e}{hint}") from None


# --------------------------------------------------------------------------- listen


class ListenError(OSError):
    """The listening socket cannot be created safely."""


@dataclass
class Listener:
    """A listening socket and what must be removed when it closes."""

    listener: trio.SocketListener
    address: Address  # the real address (port and path filled in)
    _unix_path: str | None = None
    _unix_inode: int | None = None
    _own_dir: str | None = None

    async def accept(self) -> trio.SocketStream:
        return await self.listener.accept()

    async def aclose(self) -> None:
        await self.listener.aclose()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self._unix_path).st_ino == self._unix_inode:
                    os.unlink(self._unix_path)
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._own_dir)


def check_private_dir(path: str) -> None:
    """Refuse a directory that another user could enter, that is not ours, or that is
    reached through a symbolic link (whoever owns the link decides where the socket lands,
    and can repoint it between this check and the bind)."""
    _refuse_symlinked(path)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ListenError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise ListenError(f"refusing to put the socket in {path}: the directory is not ours")
    if st.st_mode & 0o077:
        raise ListenError(
            f"refusing to put the socket in {path}: the directory is accessible by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); use a private (0700) directory, "
            "or 'unix:' for a fresh one"
        )


def _refuse_symlinked(path: str) -> None:
    real = os.path.realpath(path)
    if real != os.path.abspath(path):
        raise ListenError(
            f"refusing to put the socket in {path}: the path goes through a symbolic link "
            f"(it leads to {real}); name the real directory"
        )


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a killed host
        return
    finally:
        probe.close()
    raise ListenError(f"another host is already listening on {path}")


async def open_listener(addr: Address) -> Listener:
    if isinstance(addr, TcpAddress):
        return await _open_tcp(addr)
    return await _open_unix(addr)


async def _open_unix(addr: UnixAddress) -> Listener:
    own_dir = None
    if addr.path is None:
        own_dir = tempfile.mkdtemp(prefix="virtio-sim-")  # mode 0700
        path = os.path.join(own_dir, SOCKET_NAME)
    else:
        path = os.path.abspath(addr.path)
        parent = os.path.dirname(path)
        _refuse_symlinked(parent)  # before creating anything on the way
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700)
            except OSError as e:
                raise ListenError(f"cannot create {parent}: {e.strerror}") from None
            own_dir = parent
            os.chmod(parent, 0o700)  # makedirs' mode is filtered by the umask
        check_private_dir(parent)
        _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # No umask games: the umask belongs to the whole process and bind() awaits, so
    # narrowing it here narrowed every file other tasks and threads created meanwhile,
    # and two listeners opening at once left it narrowed for good. Nobody else can reach
    # the socket before the chmod: its directory is ours and 0700 (checked above).
    try:
        await sock.bind(path)
    except OSError as e:
        sock.close()
        if own_dir:
            with contextlib.suppress(OSError):
                os.rmdir(own_dir)
        raise ListenError(f"cannot listen on unix:{path}: {e.strerror}") from None
    os.chmod(path, 0o600)
    sock.listen(LISTEN_BACKLOG)
    return Listener(trio.SocketListener(sock), UnixAddress(path), path, os.lstat(path).st_ino, own_dir)


async def _open_tcp(addr: TcpAddress) -> Listener:
    try:
        infos = await trio.socket.getaddrinfo(
            addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as e:
        raise ListenError(f"cannot resolve {addr.host}: {e}") from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        await sock.bind(sockaddr)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on {addr}: {e.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    host, port = sock.getsockname()[:2]
    return Listener(trio.SocketListener(sock), TcpAddress(host, port))
