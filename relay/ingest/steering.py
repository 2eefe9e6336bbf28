"""Steer each sender to one worker: a classic-BPF program on a SO_REUSEPORT group; and, with
one process, all traffic to the oldest socket of the group, until it hands over to the next.

Without it the kernel hashes address *and port*, so two connections (or a TCP connection and
UDP datagrams) from one sender may reach different workers, and that sender's lines could be
written out of arrival order. The program picks the socket from the source IP alone (IPv4, or
the last 32 bits of an IPv6 address), so every message of a source goes through one worker.

While a worker is down its sockets stay open (the supervisor holds them for its replacement), so
the kernel would keep steering its senders there, to a socket nobody reads: the program is then
replaced by one that sends the dead worker's share to a live worker (`redirect`), and put back
when the replacement serves.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Mapping

SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_NET_OFF = -0x100000  # negative offsets address the network (IP) header

_LD_B_ABS, _LD_W_ABS, _LD_IMM = 0x30, 0x20, 0x00
_ALU_RSH_K, _ALU_XOR_X, _ALU_MOD_K = 0x74, 0xAC, 0x94
_JMP_JEQ_K, _JMP_JA = 0x15, 0x05
_MISC_TAX, _RET_A, _RET_K = 0x07, 0x16, 0x06


def _insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def source_ip_program(sockets: int, redirect: Mapping[int, int] | None = None) -> bytes:
    """index = (src ^ src >> 16) % sockets, src = the IPv4 source or IPv6's last 4 bytes;
    then an index in `redirect` is replaced by its value (a dead worker's -> a live one's)."""
    moves = b"".join(
        _insn(_JMP_JEQ_K, dead, jt=0, jf=1) + _insn(_LD_IMM, live)
        for dead, live in sorted((redirect or {}).items())
    )
    return b"".join(
        (
            _insn(_LD_B_ABS, _SKF_NET_OFF),  # A = version / IHL byte
            _insn(_ALU_RSH_K, 4),
            _insn(_JMP_JEQ_K, 6, jt=2),  # IPv6?
            _insn(_LD_W_ABS, _SKF_NET_OFF + 12),  # IPv4 source address
            _insn(_JMP_JA, 1),
            _insn(_LD_W_ABS, _SKF_NET_OFF + 20),  # IPv6 source address, last 32 bits
            _insn(_MISC_TAX),
            _insn(_ALU_RSH_K, 16),
            _insn(_ALU_XOR_X),
            _insn(_ALU_MOD_K, sockets),
            moves,
            _insn(_RET_A),
        )
    )


def index_program(index: int) -> bytes:
    """Every packet to the group's socket number `index` (in the order they joined; an index
    past the last socket makes the kernel fall back to its hash, i.e. to the only one)."""
    return _insn(_RET_K, index)


OLDEST = 0
"""One process per address (`workers = 1`): the socket that joined first serves; a process
starting beside it (a rolling update) binds and waits for the old one to hand over."""
SUCCESSOR = 1
"""What the old process steers to when it stops: the socket that joined after its own."""


def steer_to(sock: socket.socket, index: int) -> None:
    """Send all of `sock`'s reuseport group's traffic to its socket number `index`."""
    _attach(sock, index_program(index))


def steer_by_source_ip(
    sock: socket.socket, sockets: int, redirect: Mapping[int, int] | None = None
) -> None:
    """Attach the program to `sock`'s reuseport group, replacing the group's program (raises
    OSError where unsupported)."""
    _attach(sock, source_ip_program(sockets, redirect))


def _attach(sock: socket.socket, program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
