"""rsyslog's FROMHOST with DNS: the sender's reverse-DNS name, looked up off the hot path.

A miss answers with the IP at once and starts a lookup in the background; later messages from
that sender get the name. Entries expire after a TTL (failures too, so a dead resolver is not
asked for every message).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

logger = logging.getLogger(__name__)

MAX_PENDING_LOOKUPS = 64
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]{1,253}")


class DnsHostnames:
    def __init__(self, *, ttl_s: float = 3600.0, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, tuple[bytes, float]] = {}
        self._pending: set[str] = set()
        self.lookups = 0

    def fromhost(self, ip: str) -> bytes:
        entry = self._cache.get(ip)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        if ip not in self._pending and len(self._pending) < MAX_PENDING_LOOKUPS:
            self._pending.add(ip)
            asyncio.get_running_loop().create_task(self._lookup(ip))
        return entry[0] if entry is not None else ip.encode()

    async def _lookup(self, ip: str) -> None:
        self.lookups += 1
        name = ip
        try:
            host, _ = await asyncio.get_running_loop().getnameinfo((ip, 0), socket.NI_NAMEREQD)
            if _HOSTNAME.fullmatch(host):  # a PTR record is remote input: no odd bytes in lines
                name = host
        except (OSError, UnicodeError):
            pass
        finally:
            self._pending.discard(ip)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[ip] = (name.encode(), time.monotonic() + self._ttl_s)
