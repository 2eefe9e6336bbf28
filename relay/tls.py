"""TLS contexts for syslog over TLS (RFC 5425): the listener's and a forward target's.

Certificates are read once, at start; a file that cannot be read or a key that does not fit its
certificate stops the start with a message naming the file (ssl.SSLError / OSError).
"""

from __future__ import annotations

import ssl

from relay.config import ForwardTls, ListenTls


def server_context(tls: ListenTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: they are sent after the handshake, and a sender that never
    # reads (syslog senders only write) then closes with unread bytes in its receive buffer,
    # which makes its kernel reset the connection and throw away what it had not yet sent.
    context.num_tickets = 0
    _load_chain(context, tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        _load_ca(context, tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(tls: ForwardTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file:
        _load_ca(context, tls.ca_file)
    if tls.cert_file:
        _load_chain(context, tls.cert_file, tls.key_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS certificate {cert_file} / key {key_file}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS CA file {ca_file}: {exc}") from exc


def describe(exc: BaseException) -> str:
    """An SSL failure as an operator reads it: the library's reason and its verify message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason.lower().replace('_', ' ')} ({exc.library or 'ssl'})"
    return str(exc) or type(exc).__name__
