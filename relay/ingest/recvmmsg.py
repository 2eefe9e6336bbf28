"""recvmmsg(2) through ctypes: up to VLEN datagrams per system call, into preallocated slots.

Python's socket module has no recvmmsg, and one `recvfrom` per datagram costs a call, a 64 KiB
bytes shrunk to the datagram, an address tuple and its string per message (about 0.9 us of a
6.5 us budget, measured). Here one call fills VLEN slots of `max_bytes + 1` bytes and their
`sockaddr`s, and tells each datagram's real length (MSG_TRUNC), so a cut is seen and counted.
The senders come back packed (the IPv4 address as 4 bytes, the IPv6 one with its scope id as
20) and the listener maps them to FROMHOST-IP strings with a dict: a known sender costs one
lookup and no formatting.

Linux only (`recvmmsg` in libc); `Batch.available()` says whether it can be used, else the
listener falls back to recvfrom.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol, cast

VLEN = 64
MAX_SLOT_BYTES = 1 << 20  # all slots together: bounds the memory per socket
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20  # in the flags: msg_len is the datagram's real length, even when cut
_NAME_BYTES = 28  # sizeof(struct sockaddr_in6) >= sizeof(struct sockaddr_in)
AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


class Slots(Protocol):
    """The slots' bytes: slicing gives a bytes (a ctypes char array's slice)."""

    def __getitem__(self, key: slice, /) -> bytes: ...


_LEN_OFFSET = _Mmsghdr.msg_len.offset
_STRIDE = ctypes.sizeof(_Mmsghdr)


def _load() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p
    )  # fmt: skip
    function.restype = ctypes.c_int
    return function


_recvmmsg = _load()


class Batch:
    """The slots of one socket, and the call that fills them."""

    def __init__(self, fd: int, family: int, max_bytes: int) -> None:
        self.slot = max_bytes + 1
        self.vlen = max(1, min(VLEN, MAX_SLOT_BYTES // self.slot))
        self._fd = fd
        self._data = ctypes.create_string_buffer(self.slot * self.vlen)
        self._names = ctypes.create_string_buffer(_NAME_BYTES * self.vlen)
        self._iov = (_Iovec * self.vlen)()
        self._hdrs = (_Mmsghdr * self.vlen)()
        data, names = ctypes.addressof(self._data), ctypes.addressof(self._names)
        for i in range(self.vlen):
            self._iov[i].iov_base = data + i * self.slot
            self._iov[i].iov_len = self.slot
            header = self._hdrs[i].msg_hdr
            header.msg_name = names + i * _NAME_BYTES
            # the kernel writes back the length it used; an AF_INET socket keeps 16 and an
            # AF_INET6 one 28 (IPv4 senders come mapped), so it need not be reset per call
            header.msg_namelen = _NAME_BYTES
            header.msg_iov = ctypes.pointer(self._iov[i])
            header.msg_iovlen = 1
        # a char array's slice is a bytes: one object per datagram (a memoryview's slice would
        # be one more, and its tobytes() a call)
        self.data = cast(Slots, self._data)
        """The slots: datagram i is data[i * slot : i * slot + its length]."""
        self._starts = tuple(range(0, self.slot * self.vlen, self.slot))
        self._hdr_view = memoryview(self._hdrs).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        # per slot the received length; per name the address (4 bytes of a sockaddr_in at 4;
        # 16 of a sockaddr_in6 at 8 with its scope id after them): one unpack for the batch
        length = f"{_LEN_OFFSET}xI{_STRIDE - _LEN_OFFSET - 4}x"
        name = "4x4s20x" if family == AF_INET else "8x20s"
        self._lengths = [struct.Struct("=" + length * n) for n in range(self.vlen + 1)]
        self._senders = [struct.Struct("=" + name * n) for n in range(self.vlen + 1)]

    @staticmethod
    def available() -> bool:
        return _recvmmsg is not None

    def receive(self) -> int:
        """Fill up to `vlen` slots without blocking: how many (0 when nothing is waiting).
        Raises OSError for errors other than "nothing to read" (EAGAIN, EINTR)."""
        assert _recvmmsg is not None
        count = _recvmmsg(self._fd, self._hdrs, self.vlen, MSG_DONTWAIT | MSG_TRUNC, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(code, errno.errorcode.get(code, str(code)))
        return count

    def datagrams(self, first: int, lengths: tuple[int, ...]) -> list[bytes]:
        """Datagrams `first`, `first + 1`, ... of the last receive, of these lengths (each
        at most `slot`: a datagram's real length may exceed what its slot kept)."""
        data = self.data
        starts = self._starts[first : first + len(lengths)]
        return [data[start : start + length] for start, length in zip(starts, lengths, strict=True)]

    def lengths(self, count: int) -> tuple[int, ...]:
        return self._lengths[count].unpack_from(self._hdr_view)

    def senders(self, count: int) -> tuple[bytes, ...]:
        """Each datagram's sender, packed: the IPv4 address (4 bytes), or the IPv6 address and
        its scope id (20 bytes)."""
        return self._senders[count].unpack_from(self._names_view)


_MAPPED = b"\0" * 10 + b"\xff\xff"
_SCOPE = struct.Struct("=I")


def address_of(key: bytes) -> str:
    """FROMHOST-IP of a packed sender, as the socket module's recvfrom and peer_ip write it:
    IPv4-mapped IPv6 as IPv4, a scoped (link-local) IPv6 address with its `%zone`."""
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    if key[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, key[12:16])
    host = socket.inet_ntop(socket.AF_INET6, key[:16])
    (scope,) = _SCOPE.unpack_from(key, 16)
    if scope:
        host = socket.getnameinfo((host, 0, 0, scope), socket.NI_NUMERICHOST)[0]
    return host
