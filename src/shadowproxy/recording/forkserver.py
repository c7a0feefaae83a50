"""Writer processes forked from a copy of the proxy taken before its event loop starts.

A writer started as a fresh interpreter imports again what the proxy has already
imported (asyncio, pydantic and the config models, prometheus_client). Forked, it
shares those pages with the proxy until either writes to them. Measured
(``benchmarks/bench_sidecar_memory.py``), the proxy's PSS drops by 9 MiB, but the fork
server takes most of it back: it keeps the original of every page the other two have
both written since (reference counts, allocator pools): 3 to 6 MiB net per sidecar.

Forking the running proxy would not be safe (an event loop with its selector and
sockets, maybe threads holding locks), and a writer must be restartable at any time. So
``ForkServer.start`` forks once, at the start of ``serve``, before the loop and before
any thread: that copy (the fork server) does nothing but fork writers on request::

    proxy (event loop)              fork server (no loop, no threads)      writer
    fork_writer() -- b"f" ------->  pipes, fork ------------------------->  child.run_forked
                  <-- pid + pipe ends (SCM_RIGHTS)                          (frames on the
                  <-- pid, exit code when it ends                            pipes, as ever)

The proxy holds the writer's pipes, as with a spawned one; only its exit code comes
through the server, which is its parent. ``gc.freeze()`` before the fork keeps the
collector from writing to every object the copies share. The server and its writers
ignore SIGINT, SIGTERM and SIGHUP: they end when the proxy closes their pipes. If the
server is gone (killed) or does not answer, ``RecorderProcess`` goes back to starting
fresh interpreters.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading

log = logging.getLogger(__name__)

MESSAGE = struct.Struct("!cii")
"""Server to proxy: (b"s", pid, 0) with the writer's two pipe ends, or (b"x", pid, code)
when it has exited, or (b"e", 0, errno) when a fork failed."""
FORK = b"f"
"""Proxy to server: fork one writer."""
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLOSE_WAIT_S = 2.0
FORK_TIMEOUT_S = 10.0
"""How long a fork may take before the server is given up (and writers are spawned)."""


class ForkedWriter:
    """A writer forked by the server, with the surface of ``asyncio.subprocess.Process``
    that ``RecorderProcess`` uses: its pipes, pid, ``wait``, ``kill`` and ``returncode``."""

    def __init__(self, pid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout: asyncio.StreamReader | None = stdout
        self._code: int | None = None
        self._exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        """The exit code once the writer has exited and all it wrote has been read.

        Its exit is reported on another channel than its output, and may arrive first:
        a code shown before the last status is read would hide that status (a fatal
        error at start) from whoever checks the code to stop reading.
        """
        if not self._exited.done() or (self.stdout is not None and not self.stdout.at_eof()):
            return None
        return self._code

    async def wait(self) -> int | None:
        """The exit code; None when the server died first and the code is unknown."""
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self._code is None:  # not reaped by the server (or the server is gone)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def exited(self, code: int | None) -> None:
        """Reaped with this code, or None: the server is gone and the code with it."""
        if not self._exited.done():
            self._code = code
            self._exited.set_result(code)


class ForkServer:
    """The proxy's end of the fork server. Start it with ``start`` before the loop."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._writers: dict[int, ForkedWriter] = {}
        self._codes: dict[int, int] = {}
        """Exit codes that arrived before their writer was registered."""
        self._replies: asyncio.Queue[tuple[int, int, list[int]]] | None = None
        self._lock: asyncio.Lock | None = None
        self.alive = True

    @classmethod
    def start(cls, *, refuse_threads: bool = True) -> ForkServer | None:
        """Fork the server; None (with a warning) where that would not be safe.

        The server imports nothing more: a writer imports Arrow after its fork. Imported
        in the server, Arrow's library pages would stay mapped there (about 30 MiB of
        PSS) whether or not a writer still uses them.

        ``serve`` forks before any thread exists, and refuses otherwise: a lock another
        thread held at the fork would stay held in the server. ``refuse_threads=False``
        is for a host process whose other threads are known to hold none the server
        needs (CPython re-creates its import lock and ``logging`` its locks at a fork).
        """
        if not hasattr(os, "fork") or (refuse_threads and threading.active_count() > 1):
            log.warning("recorder: cannot fork writers here (no fork, or threads); spawning them")
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        gc.collect()
        gc.freeze()  # kept frozen here too: any write would unshare the page
        pid = os.fork()
        if pid == 0:  # the server process
            code = 1
            try:
                ours.close()
                code = _serve(theirs)
            except Exception:
                log.exception("recorder: the writer fork server stopped by an error")
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        return cls(pid, ours)

    async def fork_writer(self) -> ForkedWriter:
        """A new writer with its pipes connected; OSError if the server cannot fork."""
        loop = asyncio.get_running_loop()
        if self._replies is None:
            self._replies, self._lock = asyncio.Queue(), asyncio.Lock()
            loop.add_reader(self._sock.fileno(), self._receive)
        assert self._lock is not None
        async with self._lock:  # one request at a time: replies come in order
            if not self.alive:
                raise ConnectionError("the writer fork server is gone")
            self._sock.send(FORK)
            try:
                pid, error, fds = await asyncio.wait_for(self._replies.get(), FORK_TIMEOUT_S)
            except TimeoutError:
                # A late answer would be taken for the next request's: give it up.
                self._abandon()
                message = f"the fork server did not fork in {FORK_TIMEOUT_S:g} s"
                raise TimeoutError(message) from None
            except asyncio.CancelledError:
                # Likewise: the reply still due (a writer and its pipes) would be the
                # next request's, and that writer would never see its input close.
                self._abandon("was left waiting for a reply (cancelled)")
                raise
        if error:
            raise OSError(error, f"the fork server could not fork a writer: {os.strerror(error)}")
        if pid == 0:
            raise ConnectionError("the writer fork server is gone")
        if len(fds) != 2:
            # Fewer descriptors than sent: the proxy is at its open-file limit.
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # its child: the server reaps it
            raise OSError(
                f"writer {pid} was forked but {len(fds)} of its 2 pipes reached the proxy "
                "(is it at its open-file limit?)"
            )
        return await self._connect(pid, fds)

    async def _connect(self, pid: int, fds: list[int]) -> ForkedWriter:
        loop = asyncio.get_running_loop()
        write_end, read_end = fds
        stdout = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(read_end, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(write_end, "wb", 0)
        )
        writer = ForkedWriter(pid, asyncio.StreamWriter(transport, protocol, None, loop), stdout)
        self._writers[pid] = writer
        if pid in self._codes:
            self._exit(pid, self._codes.pop(pid))
        return writer

    def _receive(self) -> None:
        assert self._replies is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(
                    self._sock, MESSAGE.size, 2, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._gone()
                return
            kind, pid, value = MESSAGE.unpack(data)
            if kind == b"s":
                self._replies.put_nowait((pid, 0, fds))
            elif kind == b"e":
                self._replies.put_nowait((0, value, []))
            else:
                self._exit(pid, value)

    def _exit(self, pid: int, code: int) -> None:
        writer = self._writers.pop(pid, None)
        if writer is None:
            self._codes[pid] = code
        else:
            writer.exited(code)

    def _abandon(self, why: str = "does not answer") -> None:
        """Stop using a server whose reply cannot be trusted to match a request; it
        exits once it reads the close."""
        log.error("recorder: the writer fork server (pid %d) %s", self.pid, why)
        self._gone()
        self._sock.close()

    def _gone(self) -> None:
        """The server died: no more forks, and exit codes it held are unknown."""
        if not self.alive:
            return
        self.alive = False
        log.error("recorder: the writer fork server (pid %d) is gone", self.pid)
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        for writer in self._writers.values():
            writer.exited(None)
        self._writers.clear()
        assert self._replies is not None
        self._replies.put_nowait((0, 0, []))  # wakes a fork_writer waiting for a reply

    async def close(self) -> None:
        """End the server (it exits when its socket closes; a writer still running goes
        on) and reap it, waiting at most ``CLOSE_WAIT_S``."""
        if self._sock.fileno() >= 0:
            if self._replies is not None and self.alive:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self.alive = False
            self._sock.close()
        for _ in range(int(CLOSE_WAIT_S / 0.01)):
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:  # noqa: ASYNC222 (WNOHANG)
                    return
            except ChildProcessError:  # reaped already
                return
            await asyncio.sleep(0.01)
        log.warning("recorder: the writer fork server (pid %d) did not exit", self.pid)


# --- the server process ----------------------------------------------------------------


def _serve(sock: socket.socket) -> int:
    """Fork a writer per request; report exits; return when the proxy is gone."""
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 512)
        _reap(sock)
        if sock.fileno() in ready:
            if not sock.recv(16):
                return 0
            _fork(sock, (wake_read, wake_write))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            sock.send(MESSAGE.pack(b"x", pid, os.waitstatus_to_exitcode(status)))


def _fork(sock: socket.socket, wake_fds: tuple[int, int]) -> None:
    from_proxy, to_writer = os.pipe()  # the writer's stdin
    from_writer, to_proxy = os.pipe()  # its stdout
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (to_writer, from_proxy, from_writer, to_proxy):
            os.close(fd)
        sock.send(MESSAGE.pack(b"e", 0, exc.errno or 0))
        return
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            for fd in (*wake_fds, to_writer, from_writer):
                os.close(fd)
            from shadowproxy.recording.child import run_forked

            code = run_forked(from_proxy, to_proxy)
        except Exception:  # as a spawned writer's traceback would be, on stderr
            log.exception("writer: stopped by an error")
        finally:
            os._exit(code)
    os.close(from_proxy)
    os.close(to_proxy)
    try:
        socket.send_fds(sock, [MESSAGE.pack(b"s", pid, 0)], [to_writer, from_writer])
    finally:
        os.close(to_writer)
        os.close(from_writer)
