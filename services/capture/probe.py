"""Why a network camera does not open, asked cheaply: is its host answering, and does an RTSP
camera refuse the credentials?

OpenCV's FFmpeg backend only says "cannot open" (FFmpeg prints "401 (Unauthorized)" to
stderr, out of reach), so :func:`diagnose` asks the camera itself: a TCP connect to its
port, and for ``rtsp://`` with credentials one ``DESCRIBE`` request answered with Basic or
Digest authentication (RFC 2326, RFC 2617), the same request FFmpeg sends first. Written
here: it is one request and a status line, and no RTSP client library is in the stack.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from urllib.parse import unquote, urlsplit

REACHABLE = "reachable"
UNREACHABLE = "unreachable"  # nothing answers on the camera's port
REFUSED = "refused"  # the camera answers 401 to its credentials
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_STATUS = re.compile(rb"^RTSP/1\.\d (\d{3})")


def _address(uri: str) -> tuple[str, int] | None:
    parts = urlsplit(uri)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:  # a port that is not a number: nothing to ask
        return None


def reachable(uri: str, timeout_s: float = 1.0) -> bool | None:
    """Whether the camera's port accepts a TCP connection (None: not a network URL)."""
    address = _address(uri)
    if address is None:
        return None
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


def diagnose(uri: str, timeout_s: float = 2.0) -> str | None:
    """REFUSED, UNREACHABLE or REACHABLE for a network camera; None for anything else."""
    up = reachable(uri, timeout_s)
    if up is None:
        return None
    if not up:
        return UNREACHABLE
    parts = urlsplit(uri)
    if parts.scheme != "rtsp" or parts.username is None:
        return REACHABLE
    try:
        return REFUSED if _describe_status(uri, timeout_s) == 401 else REACHABLE
    except OSError:
        return REACHABLE


def _describe_status(uri: str, timeout_s: float) -> int:
    """The status of ``DESCRIBE`` with the URL's credentials (Digest if the camera asks for it)."""
    parts = urlsplit(uri)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    address = _address(uri)
    assert address is not None
    host = address[0] if parts.port is None else f"{address[0]}:{address[1]}"
    plain = parts._replace(netloc=host).geturl()
    with socket.create_connection(address, timeout=timeout_s) as sock:
        status, headers = _request(sock, plain, 1, "")
        if status != 401:
            return status
        challenge = headers.get("www-authenticate", "")
        if challenge.lower().startswith("digest"):
            auth = _digest(challenge, user, password, plain)
        else:
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        status, _ = _request(sock, plain, 2, auth)
        return status


def _request(sock: socket.socket, url: str, cseq: int, auth: str) -> tuple[int, dict[str, str]]:
    lines = [f"DESCRIBE {url} RTSP/1.0", f"CSeq: {cseq}", "Accept: application/sdp", "User-Agent: emopipe"]
    if auth:
        lines.append(f"Authorization: {auth}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    match = _STATUS.match(head)
    if match is None:
        raise OSError(f"not an RTSP answer: {head[:40]!r}")
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    length = int(headers.get("content-length", "0") or 0)
    body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
    while len(body) < length:  # read the body off the connection before the next request
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return int(match.group(1)), headers


def _digest(challenge: str, user: str, password: str, url: str) -> str:
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()  # RFC 2617's choice, not ours
    ha2 = hashlib.md5(f"DESCRIBE:{url}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{url}", response="{response}"'
