"""A TCP proxy that can cut a dependency off, stall it or black-hole it, until restored.

Put between the stack and a server the test does not own (a shared
PostgreSQL), it makes that server unreachable, or silent, for the stack alone:

- ``cut``: open connections closed, new ones refused (a server that went away);
- ``stall``: nothing passes either way, bytes and closes are held and delivered
  at ``restore`` (a server or path that hangs, then comes back);
- ``black_hole``: open connections and new ones get no answer, what is sent into
  them is lost, and they end at ``restore`` (a path that drops every packet for
  longer than the connections survive).

NOTE: the proxy's own kernel acknowledges the client's packets and keepalives, so
a client here sees a server that does not answer, never a dead TCP path: TCP keepalives
and ``tcp_user_timeout`` do not fire, only the client's own deadlines do.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from shared.redis_server import free_port


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        #: Sockets of connections that live in the black hole: nothing they send is passed on.
        self._lost: set[socket.socket] = set()
        self._stalled = False
        self._black_hole = False
        self._state = threading.Condition()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and close every open one, as a server that went away would."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._state:
            connections, self._connections = self._connections | self._lost, set()
            self._lost = set()
            self._stalled = self._black_hole = False
            self._state.notify_all()
        _end(connections)

    def stall(self) -> None:
        """Pass nothing on, either way, until ``restore``; what arrives meanwhile is delivered then."""
        with self._state:
            self._stalled = True

    def black_hole(self) -> None:
        """Answer nothing on open connections or new ones, and lose what they send, until ``restore`` ends them."""
        with self._state:
            self._black_hole = True
            self._lost |= self._connections
            self._connections = set()
            self._state.notify_all()  # held bytes of a stall are lost now

    def restore(self) -> None:
        """Back to passing everything on: held bytes delivered, black-holed connections ended, new ones accepted."""
        with self._state:
            lost, self._lost = self._lost, set()
            self._stalled = self._black_hole = False
            self._state.notify_all()
        _end(lost)
        if self._listener is None:
            self.start()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            with self._state:
                if self._black_hole:
                    # Accepted by the kernel anyway (the backlog); it never hears from the server.
                    self._lost.add(client)
                    threading.Thread(target=self._pipe, args=(client, None), daemon=True).start()
                    continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._state:
                if self._listener is not listener:  # cut while this one was being connected
                    client.close()
                    upstream.close()
                    continue
                (self._lost if self._black_hole else self._connections).update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket | None) -> None:
        """Copy ``source`` to ``target`` while passing; hold while stalled; drop while black-holed."""
        try:
            while True:
                data = source.recv(65536)
                with self._state:
                    while self._stalled and source in self._connections:
                        self._state.wait()
                    lost = source in self._lost
                    if not data:
                        if lost:
                            # NOTE: a close sent into the black hole is lost too; the far end
                            # learns of it at ``restore``, as it would once the path is back.
                            return
                        break
                if not lost and target is not None:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            with self._state:
                live = source in self._connections
                self._connections.discard(source)
                if target is not None:
                    self._connections.discard(target)
            if live:
                _end({source} if target is None else {source, target})


def _end(sockets: set[socket.socket]) -> None:
    for sock in sockets:
        # NOTE: close() alone does not wake a thread blocked in recv() on the socket, and the
        # connection would live on as a black hole; shutdown() ends it at once for both peers.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
