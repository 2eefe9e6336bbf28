"""Header timestamps, recognised exactly as rsyslog 8.2302's datetime.c does.

Both parsers work on a sanitized message from an offset and return the offset just past the
timestamp and its trailing space, or -1 when there is no valid timestamp there. They mirror the C
code step by step (including its integer parsing and its off-by-one after a leading year), since
whether a word is consumed as a timestamp decides what becomes HOSTNAME and TAG.
"""

from __future__ import annotations

_DIGITS = frozenset(b"0123456789")
_INT_LIMIT = 1 << 31

_MONTHS: dict[bytes, int] = {
    name: number
    for number, name in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun",
         b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"),
        start=1,
    )
}  # fmt: skip


def _parse_int(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """srSLMGParseInt32: decimal digits up to `end` (0 if none, -1 if over a C int)."""
    start = pos
    while pos < end and data[pos] in _DIGITS:
        pos += 1
    if pos == start:
        return 0, pos
    digits = data[start:pos].lstrip(b"0")
    if len(digits) > 10:
        return -1, pos
    value = int(digits or b"0")
    # rsyslog rejects a number that overflows a C int (observed: a 10-digit fraction of
    # 9999999999 fails where 1560000000 passes); -1 fails every range check
    return (value if value < _INT_LIMIT else -1), pos


def parse_rfc3339(data: bytes, pos: int) -> int:
    """ParseTIMESTAMP3339: `YYYY-MM-DDThh:mm:ss[.frac](Z|+hh:mm)` then SP or end."""
    end = len(data)
    year, pos = _parse_int(data, pos, end)
    if not 0 <= year < 2100 or pos >= end or data[pos] != 0x2D:  # '-'
        return -1
    month, pos = _parse_int(data, pos + 1, end)
    if not 1 <= month <= 12 or pos >= end or data[pos] != 0x2D:
        return -1
    day, pos = _parse_int(data, pos + 1, end)
    if not 1 <= day <= 31 or pos >= end or data[pos] != 0x54:  # 'T'
        return -1
    pos = _parse_clock(data, pos + 1, end)
    if pos < 0:
        return -1
    if pos < end and data[pos] == 0x2E:  # '.' secfrac, any number of digits
        fraction, pos = _parse_int(data, pos + 1, end)
        if fraction < 0:
            return -1
    if pos >= end:
        return -1  # the offset is mandatory
    mark = data[pos]
    if mark == 0x5A:  # 'Z'
        pos += 1
    elif mark in (0x2B, 0x2D):  # '+' / '-'
        hours, pos = _parse_int(data, pos + 1, end)
        if not 0 <= hours <= 23 or pos >= end or data[pos] != 0x3A:
            return -1
        minutes, pos = _parse_int(data, pos + 1, end)
        if not 0 <= minutes <= 59:
            return -1
    else:
        return -1
    if pos < end:
        if data[pos] != 0x20:
            return -1
        pos += 1
    return pos


def _parse_clock(data: bytes, pos: int, end: int) -> int:
    """`hh:mm:ss` as plain decimal numbers (any digit count) within range; -1 if not."""
    hour, pos = _parse_int(data, pos, end)
    if not 0 <= hour <= 23 or pos >= end or data[pos] != 0x3A:
        return -1
    minute, pos = _parse_int(data, pos + 1, end)
    if not 0 <= minute <= 59 or pos >= end or data[pos] != 0x3A:
        return -1
    second, pos = _parse_int(data, pos + 1, end)
    if not 0 <= second <= 60:
        return -1
    return pos


def parse_bsd(data: bytes, pos: int) -> int:
    """ParseTIMESTAMP3164 (no TZ, no year after time): `[YYYY ]Mmm [ ]d [YYYY ]hh:mm:ss[.frac][:]`.

    rsyslog tracks the remaining length in a counter that is not decremented for the space
    after a leading year; `remaining` reproduces that, and reads past the end see the C string's
    terminating NUL.
    """
    size = len(data)
    remaining = size - pos

    def at(index: int) -> int:
        return data[index] if index < size else 0

    if remaining < 3:
        return -1
    year = 0
    if at(pos) in _DIGITS:
        start = pos
        year, pos = _parse_int(data, pos, size)
        remaining -= pos - start
        if not 1970 <= year <= 2100 or at(pos) != 0x20:
            return -1
        pos += 1  # rsyslog skips this SP without counting it
    if _MONTHS.get(bytes(at(pos + k) for k in range(3)).lower()) is None:
        return -1
    pos += 3
    remaining -= 3
    if remaining <= 0 or at(pos) != 0x20:
        return -1
    pos += 1
    remaining -= 1
    if at(pos) == 0x20:  # one-digit day padded with a second space
        pos += 1
        remaining -= 1
    day, pos, remaining = _int_counted(data, pos, remaining)
    if not 1 <= day <= 31 or remaining <= 0 or at(pos) != 0x20:
        return -1
    pos += 1
    remaining -= 1
    hour, pos, remaining = _int_counted(data, pos, remaining)
    if year == 0 and 1970 < hour < 2100:  # Cisco-style year before the time
        if remaining <= 0 or at(pos) != 0x20:
            return -1
        hour, pos, remaining = _int_counted(data, pos + 1, remaining - 1)
    if not 0 <= hour <= 23 or remaining <= 0 or at(pos) != 0x3A:
        return -1
    minute, pos, remaining = _int_counted(data, pos + 1, remaining - 1)
    if not 0 <= minute <= 59 or remaining <= 0 or at(pos) != 0x3A:
        return -1
    second, pos, remaining = _int_counted(data, pos + 1, remaining - 1)
    if not 0 <= second <= 60:
        return -1
    if remaining > 0 and at(pos) == 0x2E:  # '.' sub-second (Cisco IOS)
        fraction, pos, remaining = _int_counted(data, pos + 1, remaining - 1)
        if fraction < 0:
            return -1
    if remaining > 0 and at(pos) == 0x3A:  # trailing ':' (Cisco)
        pos += 1
        remaining -= 1
    if remaining > 0:
        if at(pos) != 0x20:
            return -1
        pos += 1
    return min(pos, size)


def _int_counted(data: bytes, pos: int, remaining: int) -> tuple[int, int, int]:
    """_parse_int bounded by rsyslog's own remaining-length counter rather than the real end."""
    value, new_pos = _parse_int(data, pos, min(len(data), pos + max(remaining, 0)))
    return value, new_pos, remaining - (new_pos - pos)
