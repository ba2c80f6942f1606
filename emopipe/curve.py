"""CURVE on the bus: encrypted links, and only peers holding a known key get in or out.

``emopipe keys DIR`` makes the key pairs (libzmq's certificate files, via ``zmq.auth``):
one server pair per link that capture binds, named after it (``frames``, ``faces``,
``results``), and one ``client`` pair for the stages that connect (detect and classify
workers, the sink). With ``curve.keys = DIR`` in the config:

* capture's sockets are CURVE servers with their link's secret key, and accept a client
  only if its public key is one of the ``*.key`` files in DIR (a ZAP handler,
  ``zmq.auth``'s ``ThreadAuthenticator``); a peer without CURVE, or with another key,
  fails the handshake: it can neither send a message in nor receive one;
* connecting sockets are CURVE clients with the client pair and their link's server key.

A host that only connects needs ``client.key_secret`` and the links' public ``*.key``
files, not the servers' secret keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from emopipe import topology

LINKS = tuple(link.name for link in topology.links())
CLIENT = "client"


class CurveKeyError(OSError):
    """A key file that is missing or not a CURVE certificate; the message names it."""


@dataclass(frozen=True)
class Keys:
    directory: Path

    def _load(self, name: str, secret: bool) -> tuple[bytes, bytes | None]:
        path = self.directory / (f"{name}.key_secret" if secret else f"{name}.key")
        try:
            public, secret_key = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise CurveKeyError(f"CURVE key {path}: {exc} (make keys with `emopipe keys {self.directory}`)") from exc
        if secret and secret_key is None:
            raise CurveKeyError(f"CURVE key {path} holds no secret key")
        return public, secret_key

    def serve(self, sock: zmq.Socket, link: str) -> None:
        """Make ``sock`` (before it binds) the CURVE server of ``link``."""
        public, secret = self._load(link, secret=True)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True

    def connect(self, sock: zmq.Socket, link: str) -> None:
        """Make ``sock`` (before it connects) a CURVE client of ``link``'s server."""
        public, secret = self._load(CLIENT, secret=True)
        server, _ = self._load(link, secret=False)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server

    def check(self) -> None:
        """Every file a one-host pipeline needs is there (the launcher checks before it starts a stage)."""
        for name in (*LINKS, CLIENT):
            self._load(name, secret=True)

    def authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """Started: accepts CURVE clients whose public key is a ``*.key`` file of the directory."""
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.directory))
        return auth


def load(directory: str) -> Keys | None:
    """The keys of ``curve.keys``; None when it is "" (plain links)."""
    if not directory:
        return None
    path = Path(directory)
    if not path.is_dir():
        raise CurveKeyError(f"curve.keys {directory} is not a directory (make one with `emopipe keys {directory}`)")
    return Keys(path)


def make_keys(directory: Path) -> list[Path]:
    """Write a server key pair per link and the client pair into ``directory`` (secret files 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (*LINKS, CLIENT):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written
