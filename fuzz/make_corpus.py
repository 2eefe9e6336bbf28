"""Build the seed corpora for the atheris harnesses.

    python fuzz/make_corpus.py            # -> fuzz/corpus-parse/, fuzz/corpus-framing/

corpus-parse: one file per frame, from the real-world-looking lines below and every message of
tests/corpus/*.jsonl. corpus-framing: TCP streams built from the same lines (LF-framed,
octet-counted, mixed, oversize), each behind the 4-byte parameter header that fuzz_framing.py
reads (max_msg_bytes, max_frame_bytes, chunking). Files are named by content hash, so running
it again adds nothing twice and keeps what the fuzzers found.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
# framing streams stay short (a few lines each): the harness feeds them byte by byte
FRAMING_LINE_MAX_BYTES = 400

SEED_LINES: list[bytes] = [
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    b"<86>Nov 26 21:00:01 pod-1 sshd[123]: Accepted publickey for root from 10.0.0.1 port 22 ssh2",
    (
        b"<38>Jan  5 10:11:12 web01 sudo:   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
        b"COMMAND=/bin/ls"
    ),
    b"<78>Mar  1 00:00:01 db-3 CRON[4242]: (root) CMD (/usr/lib/php/sessionclean)",
    b"<30>Apr 30 23:59:59 node7 systemd[1]: Started Session 12 of user bob.",
    (
        b"<6>May  9 08:15:02 fw kernel: [UFW BLOCK] IN=eth0 OUT= SRC=203.0.113.9 "
        b"DST=198.51.100.2 LEN=40 PROTO=TCP SPT=4433 DPT=23"
    ),
    b"<22>Jun 17 12:00:00 mx postfix/smtpd[9811]: connect from unknown[192.0.2.44]",
    (
        b"<190>Jul  4 04:04:04 lb haproxy[777]: 192.0.2.1:5555 [04/Jul/2024:04:04:04.123] fe "
        b'be/s1 0/0/1/2/3 200 512 - - ---- 1/1/0/0/0 0/0 "GET / HTTP/1.1"'
    ),
    (
        b'<190>Aug 21 09:30:00 web-7f9c nginx: {"remote":"198.51.100.7","request":"POST '
        b'/api/v1/x HTTP/1.1","status":201,"body":"{\\"a\\":1}"}'
    ),
    (
        b"<187>Sep 12 10:00:00 edge nginx: 2024/09/12 10:00:00 [error] 12#12: *3 open() "
        b'"/usr/share/nginx/html/x" failed (2: No such file or directory)'
    ),
    (
        b"<166>2024-01-05T10:11:12Z asa01 : %ASA-6-302013: Built outbound TCP connection 1 "
        b"for outside:192.0.2.1/443 (192.0.2.1/443)"
    ),
    b"<189>123: *Jan  5 10:11:12.345: %SYS-5-CONFIG_I: Configured from console by admin on vty0",
    b"<189>45: Jan  5 2024 10:11:12 UTC: %LINK-3-UPDOWN: Interface Gi0/1, changed state to up",
    (
        b"<190>Jan  5 10:11:12 nx01 2024 Jan  5 10:11:12 UTC: %ETHPORT-5-IF_UP: Interface "
        b"Ethernet1/1 is up"
    ),
    (
        b'<189>date=2024-01-05 time=10:11:12 devname="FGT60F" devid="FGT60FTK1" '
        b'logid="0000000013" type="traffic" srcip=10.0.0.5 action="accept"'
    ),
    (
        b"<14>Jan  5 10:11:12 PA-220 1,2024/01/05 "
        b"10:11:12,012801000001,TRAFFIC,end,2305,2024/01/05 "
        b"10:11:12,10.0.0.5,8.8.8.8,,,allow-dns"
    ),
    (
        b"<165>1 2024-01-05T10:11:12.123+09:00 mx480 mgd 4242 UI_COMMIT "
        b'[junos@2636.1.1.1.2.18 username="admin" comment="x"] User committed'
    ),
    (
        b"<28>Jan  5 10:11:12 srx RT_FLOW: RT_FLOW_SESSION_CREATE: session created "
        b"10.0.0.1/1->10.0.0.2/2"
    ),
    (
        b"<14>1 2024-01-05T10:11:12.000000+00:00 WIN-7QH 4624 - - [NXLOG@14506 "
        b'EventID="4624"] An account was successfully logged on.'
    ),
    (
        b"<13>Jan  5 10:11:12 WIN-7QH MSWinEventLog\t1\tSecurity\t42\tFri Jan 05 10:11:12 "
        b"2024\t4624\tlogon\r"
    ),
    (
        b'<14>Jan  5 10:11:12 WIN-7QH {"EventTime":"2024-01-05 '
        b'10:11:12","Hostname":"WIN-7QH","EventID":4625,"Message":"\xec\x8b\xa4\xed\x8c\xa8"}'
    ),
    b"<30>1 2024-01-05T10:11:12.123456Z docker-host myapp 4242 - - hello from a container",
    b"<30>Jan  5 10:11:12 docker-host myapp/3f2a1b[4242]: hello from a container",
    (
        b"<14>Jan  5 10:11:12 host01 audispd: node=host01 type=SYSCALL "
        b"msg=audit(1704449472.123:42): arch=c000003e syscall=59 success=yes"
    ),
    b'<13>Jan  5 10:11:12 host01 app: @cee: {"event":"login","user":"bob"}',
    (
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] \xef\xbb\xbfAn '
        b"application event"
    ),
    (
        b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to "
        b"make the do-nuts."
    ),
    b"<13>1 - - - - - -",
    b'<13>1 2024-01-05T10:11:12Z host app - - [a b="c\\]"][d e="f"] msg',
    b"<13>2024-01-05T10:11:12.123+09:00 host01 app[7]: RFC 3339 timestamp in a legacy header",
    b"<13>Jan  5 2024 10:11:12 host01 app: year after the day",
    b"<13>2024 Jan  5 10:11:12 host01 app: leading year",
    b"<13> Jan  5 10:11:12 host01 app: HP ProCurve leading space",
    b"<13>Jan  5 10:11:12 app[12]: no hostname",
    b"<13>[2024-01-05 10:11:12] no header, bracketed",
    b'<13>{"json":"without a header"}',
    b"plain text without PRI",
    b"<999>invalid PRI",
    b"<013>leading zero PRI",
    b"<13>Jan  5 10:11:12 host01 app: tab\there NUL\x00 LF\n",
    b"<13>Jan  5 10:11:12 host01 app: invalid UTF-8 \xff\xfe and \xc3\xa9",
]


def framing_seeds(lines: list[bytes]) -> Iterable[bytes]:
    """Streams behind a parameter header (see fuzz_framing.decode)."""
    lines = [line for line in lines if len(line) <= FRAMING_LINE_MAX_BYTES]
    lf_safe = [line for line in lines if b"\n" not in line and not line[:1].isdigit()]
    octet = [b"%d %s" % (len(line), line) for line in lines]
    # max_msg_bytes 8096 / max_frame_bytes 200000 (0xFF, 0xFF), then small limits
    for header in (b"\xff\xff\x00\x00", b"\x0f\x30\x01\x25", b"\x03\x0a\x02\x91"):
        for i in range(0, len(lines), 4):
            yield header + b"\n".join(lf_safe[i : i + 4]) + b"\n"
            yield header + b"".join(octet[i : i + 4])
            yield header + b"".join(
                frame if k % 2 else lf + b"\n"
                for k, (frame, lf) in enumerate(
                    zip(octet[i : i + 4], lf_safe[i : i + 4], strict=False)
                )
            )
    for mode in b"\x00\x01\x02":
        header = b"\x07\x1e%c\x11" % mode
        yield header + b"9" * 40 + b" " + b"y" * 20 + b"\n7 abc"
        yield header + b"40 " + b"x" * 40 + b"abcdefghijklmnopqrst"
        yield header + b"ab\n12345678901 x\n3 abc0\nabcdefghijklmnop\n\n0 q"
    yield b"\xff\xff\x00\x00" + b"100000 " + b"z" * 300


def write(directory: Path, inputs: Iterable[bytes]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for data in inputs:
        path = directory / hashlib.sha1(data).hexdigest()
        if not path.exists():
            path.write_bytes(data)
            written += 1
    return written


def main() -> int:
    sys.path.insert(0, str(FUZZ_DIR.parent))  # run as a script: the repo's tests/ package
    from tests.rsyslogd import load_corpus  # the ~500 real-world messages of tests/corpus

    lines = SEED_LINES + [message.raw for message in load_corpus()]
    parse_new = write(FUZZ_DIR / "corpus-parse", lines)
    framing_new = write(FUZZ_DIR / "corpus-framing", framing_seeds(lines))
    print(f"corpus-parse: {parse_new} new seeds; corpus-framing: {framing_new} new seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
