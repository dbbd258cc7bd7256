"""The uvicorn server around the app: the listening socket bound before anything is loaded,
a deadline for reading request headers, and keep-alive and concurrency limits.

uvicorn has no deadline for the request line and headers: a client that connects and sends
one header byte a minute holds a connection (and its memory) for ever. ``HeaderDeadlineProtocol``
closes a connection whose headers have not all arrived ``header_timeout_seconds`` after it
opened or after its previous request's first byte; the body is under the request timeout
(:mod:`serving.middleware.limits`) once the headers are in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from serving.deadlines import Deadlines
from serving.settings import Settings

logger = logging.getLogger(__name__)

_TIMEOUT_BODY = b"The request headers did not arrive in time: send them at once, then retry.\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class PortUnavailableError(Exception):
    """The address to listen on cannot be bound (in use, not local, no permission)."""


class ServingConfig(uvicorn.Config):
    """uvicorn's config plus the header deadline, which travels with it to worker processes."""

    def __init__(self, app: Any, *, header_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_seconds = header_timeout_seconds


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers arrive too slowly.

    The connections of a server share one timer (:class:`~serving.deadlines.Deadlines`, kept
    on uvicorn's state shared by its connections): a timer per request cost as much as the
    request timeout did.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _header_deadlines(self) -> Deadlines[HeaderDeadlineProtocol] | None:
        seconds = getattr(self.config, "header_timeout_seconds", 0)
        if seconds <= 0:
            return None
        deadlines: Deadlines[HeaderDeadlineProtocol] | None = getattr(
            self.server_state, "header_deadlines", None
        )
        if deadlines is None:
            deadlines = Deadlines(seconds, HeaderDeadlineProtocol._headers_too_slow)
            self.server_state.header_deadlines = deadlines  # type: ignore[attr-defined]
        return deadlines

    def _arm_header_deadline(self) -> None:
        deadlines = self._header_deadlines()
        if deadlines is not None:
            deadlines.arm(self)

    def _disarm_header_deadline(self) -> None:
        deadlines = self._header_deadlines()
        if deadlines is not None:
            deadlines.disarm(self)

    def _headers_too_slow(self) -> None:
        if self.transport.is_closing():
            return
        logger.warning(
            "Closed a connection from %s: its request headers took longer than %gs "
            "(SERVING_HEADER_TIMEOUT_SECONDS)",
            f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            getattr(self.config, "header_timeout_seconds", 0),
        )
        if self.cycle is None or self.cycle.response_complete:  # no answer of ours under way
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to ``host:port``, ready for uvicorn to listen on.

    Bound before the app (and its model) is loaded, so a busy port fails at once.
    ``reuse_port``: one of several sockets on the same port, one per worker (SO_REUSEPORT).

    Raises:
        PortUnavailableError: the address cannot be bound; the message says what to do.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortUnavailableError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Another process may be "
            f"using the port (e.g. `ss -ltnp 'sport = :{port}'` shows which): stop it, or "
            "choose another port with SERVING_PORT (or --port)."
        ) from exc
    sock.set_inheritable(True)
    return sock


def server_config(app: Any, settings: Settings, **options: Any) -> ServingConfig:
    """uvicorn's config for ``app`` (an app, or an import string with ``factory=True``)."""
    return ServingConfig(
        app,
        host=settings.host,
        port=settings.port,
        http=HeaderDeadlineProtocol,
        header_timeout_seconds=settings.header_timeout_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.max_concurrency,
        timeout_graceful_shutdown=settings.graceful_timeout_seconds,
        **options,
    )


GC_THRESHOLDS = (50_000, 20, 100)
"""The garbage collector's thresholds while serving (Python's default: 700, 10, 10)."""


class ServingServer(uvicorn.Server):
    """uvicorn's server, which freezes what its startup left alive before serving."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # The modules (FastAPI, MLflow, scikit-learn, pandas) and the first model are loaded
        # by now and live as long as the process: several hundred thousand objects that every
        # full collection would walk again, with the event loop held. Requests allocate enough
        # to trigger one every few hundred requests, and decoding a 10,000-row body several.
        # Frozen, they are left out (a 2 MB JSON body decodes in about half the time).
        # Collected first, so no garbage is frozen with them.
        gc.collect()
        gc.freeze()
        # A request allocates a few hundred containers (the body's dicts, pydantic's, the
        # answer's) and frees nearly all by reference counting: cycles are rare. At the
        # default threshold (700) the collector ran every few requests; alternating A/B
        # rounds measured 9-13% more single-row throughput at these.
        gc.set_threshold(*GC_THRESHOLDS)
        logger.info(
            "Froze the %d objects alive after startup: garbage collections skip them; "
            "collection thresholds %s",
            gc.get_freeze_count(),
            GC_THRESHOLDS,
        )


class _WorkerProcess(Process):
    """uvicorn's worker process, running :class:`ServingServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ServingServer(config=self.config)
        return self._server


def serve(config: ServingConfig, sock: socket.socket) -> None:
    """Run uvicorn on the bound ``sock``: in this process, or in ``config.workers`` ones,
    each listening on its own socket (see :class:`WorkerSockets`)."""
    if config.workers == 1:
        ServingServer(config).run(sockets=[sock])
        return
    if not hasattr(socket, "SO_REUSEPORT"):  # not Linux or BSD: one shared socket
        Multiprocess(config, sockets=[sock]).run()
        return
    host, port = sock.getsockname()[:2]
    # ``sock`` proved the port free (it was bound without SO_REUSEPORT, so nobody shares it
    # unknowingly); the workers' sockets take its place.
    sock.close()
    sockets = [bind_socket(host, port, reuse_port=True) for _ in range(config.workers)]
    WorkerSockets(config, sockets).run()


class WorkerSockets(Multiprocess):
    """uvicorn's supervisor, with one listening socket per worker (SO_REUSEPORT).

    On one shared socket, the first worker to wake accepts every connection waiting (asyncio
    and uvloop accept in a loop): a client that opens its keep-alive connections at once
    gives them all to one worker, and the others idle. Measured with 32 connections: two
    workers did 0.85-1.17x one worker's requests, using one core between them. With a socket
    each, the kernel spreads new connections over the workers by a hash of their addresses.

    A worker restarted after a crash listens on every socket and runs uvicorn's own server,
    without :class:`ServingServer`'s freeze (uvicorn's own restart path): correct, only less
    even and a little slower.
    """

    def init_processes(self) -> None:
        # ``self.sockets`` holds one socket per worker (``serve`` binds ``workers`` of them).
        for worker in range(self.processes_num):
            process = _WorkerProcess(self.config, [self.sockets[worker]])
            process.start()
            self.processes.append(process)
