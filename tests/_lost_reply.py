"""A TCP relay to the test server that can lose one reply, the way a network does.

``LostReply(server_url)`` listens on 127.0.0.1 and relays every connection to
the server (its Unix socket or TCP address). ``refuse(n)`` makes it hang up
on the next ``n`` connections at once, as a server that is restarting does:
the connection attempt fails before any statement could be sent.
``lose_reply(marker, nth)`` arms it: the ``nth`` client message holding ``marker`` (a piece of a
statement's SQL) is passed on, the server runs the statement to the end
(``ReadyForQuery``: with autocommit it has committed), and then the reply is
dropped and both sockets closed. The client sees its connection die with
the work done: exactly the case where repeating a call misreports it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# ReadyForQuery, transaction status idle: the statement finished and committed.
_READY_IDLE = b"Z\x00\x00\x00\x05I"


class LostReply:
    """The relay; ``url`` reaches the server through it. Use as a context manager."""

    def __init__(self, server_url: str) -> None:
        params = conninfo_to_dict(server_url)
        host = str(params.get("host") or "localhost")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._target: Any = f"{host}/.s.PGSQL.{port}"
            self._family = socket.AF_UNIX
        else:
            self._target = (host, port)
            self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server(("127.0.0.1", 0))
        relay_port = self._listener.getsockname()[1]
        relayed = {k: v for k, v in params.items() if k not in ("host", "hostaddr", "port")}
        self.url = make_conninfo("", **relayed, host="127.0.0.1", port=str(relay_port))
        self.lost = 0  # replies dropped so far
        self.refused = 0  # connections hung up on so far
        self._refusals = 0
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._countdown = 0
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def __enter__(self) -> LostReply:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lose_reply(self, marker: str, nth: int = 1) -> None:
        """Drop the reply to the ``nth`` message (from now) that holds ``marker``."""
        with self._lock:
            self._marker = marker.encode()
            self._countdown = nth

    def refuse(self, count: int) -> None:
        """Hang up on the next ``count`` connections as soon as they are accepted."""
        with self._lock:
            self._refusals = count

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    # -- relaying ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._refusals > 0
                if refuse:
                    self._refusals -= 1
                    self.refused += 1
            if refuse:
                client.close()
                continue
            thread = threading.Thread(target=self._relay, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _doomed(self, data: bytes) -> bool:
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False
            self._countdown -= 1
            if self._countdown > 0:
                return False
            self._marker = None
            return True

    def _relay(self, client: socket.socket) -> None:
        server = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            server.connect(self._target)
        except OSError:
            client.close()
            server.close()
            return
        doomed = False
        dropped = b""
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(server, selectors.EVENT_READ)
            try:
                while not self._closed.is_set():
                    for key, _ in selector.select(timeout=0.2):
                        source = key.fileobj
                        assert isinstance(source, socket.socket)
                        data = source.recv(65536)
                        if not data:
                            return
                        if source is client:
                            doomed = doomed or self._doomed(data)
                            server.sendall(data)
                        elif doomed:
                            dropped = (dropped + data)[-len(_READY_IDLE) :]
                            if dropped == _READY_IDLE:  # done and committed: lose the reply
                                with self._lock:
                                    self.lost += 1
                                return
                        else:
                            client.sendall(data)
            except OSError:
                return
            finally:
                for sock in (client, server):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
