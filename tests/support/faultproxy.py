"""A fault-injecting TCP proxy in front of a local HTTP registry (threads, loopback only).

Each client connection carries one request: the proxy reads its head, looks for the first
:class:`Fault` whose ``path`` fragment is in the request path and which has uses left, and
then either answers itself (``status``), forwards the request and damages the response
(``cut_after``, ``stall_after``), forwards it without its ``Range`` header
(``strip_range``), or forwards it untouched. The upstream request gets
``Connection: close``, so every response ends with its connection and the client opens a new
one for its next request (which the proxy then sees as a new request).

Every request is recorded (method, path, headers) for the tests to look at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from types import TracebackType


@dataclasses.dataclass
class Fault:
    """What to do with the next ``times`` requests whose path contains ``path``."""

    path: str
    times: int = 1
    #: answer with this status (and ``headers``), without asking the registry
    status: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: forward, then close the connection after this many bytes of the response body
    cut_after: int | None = None
    #: forward, then stop sending (keep the connection open) after this many body bytes
    stall_after: int | None = None
    #: forward without the request's ``Range`` header (a server that ignores ranges)
    strip_range: bool = False


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class FaultProxy:
    """``with FaultProxy("127.0.0.1:5000") as proxy:`` ... ``proxy.host`` is the address to
    use instead of the registry's. ``proxy.faults`` may be changed at any time."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.faults = list(faults or [])
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def paths(self, fragment: str = "") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if fragment in r.path]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.path in path:
                    fault.times -= 1
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = client.recv(65536)
                    if not data:
                        return
                    head += data
                    if len(head) > 1 << 20 or not head[:1].isalpha():
                        return  # not HTTP (a TLS handshake): closed, as a server would
            except OSError:
                return
            head, _, _body = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            pairs: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                pairs.append((name.strip(), value.strip()))
            headers = dict(pairs)  # for the record (a repeated header keeps its last value)
            with self._lock:
                self.requests.append(Request(method, path, dict(headers)))
            fault = self._take(path)
            if fault is not None and fault.status is not None:
                extra = "".join(f"{k}: {v}\r\n" for k, v in fault.headers.items())
                response = (
                    f"HTTP/1.1 {fault.status} Fault\r\n{extra}Content-Length: 0\r\n"
                    "Connection: close\r\n\r\n"
                )
                with contextlib.suppress(OSError):
                    client.sendall(response.encode())
                return
            forwarded = [
                (k, v)
                for k, v in pairs  # every header, repeated ones too (skopeo sends several Accept)
                if k.lower() != "connection"
                and not (fault is not None and fault.strip_range and k.lower() == "range")
            ]
            forwarded.append(("Connection", "close"))
            request = f"{method} {path} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in forwarded
            )
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                return
            with upstream:
                upstream.sendall(request.encode("latin-1") + b"\r\n")
                self._relay(upstream, client, fault)

    def _relay(self, upstream: socket.socket, client: socket.socket, fault: Fault | None) -> None:
        limit = None
        stall = False
        if fault is not None and fault.cut_after is not None:
            limit = fault.cut_after
        elif fault is not None and fault.stall_after is not None:
            limit, stall = fault.stall_after, True
        buffered = b""
        header_done = False
        body_sent = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    return
                if not header_done:
                    buffered += data
                    if b"\r\n\r\n" not in buffered:
                        continue
                    header, _, data = buffered.partition(b"\r\n\r\n")
                    client.sendall(header + b"\r\n\r\n")
                    header_done = True
                if limit is not None and body_sent + len(data) >= limit:
                    client.sendall(data[: limit - body_sent])
                    if stall:
                        # keep the connection open, send nothing more, until the client
                        # gives up (or the proxy closes)
                        client.settimeout(0.1)
                        while not self._stop.is_set():
                            try:
                                if not client.recv(1):
                                    return
                            except TimeoutError:
                                continue
                            except OSError:
                                return
                    return
                client.sendall(data)
                body_sent += len(data)
        except OSError:
            return
        finally:
            time.sleep(0)
