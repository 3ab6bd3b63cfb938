"""Reading images through skopeo's image proxy (``skopeo experimental-image-proxy``).

Every transport other than ``oci:`` (``docker://``, ``oci-archive:``, ``docker-archive:``,
``containers-storage:``, ``dir:``, ...) is read through skopeo, as composefs-rs does. skopeo is
started as a child process and spoken to over one end of a ``SOCK_SEQPACKET`` socket pair:

* a request is one JSON message ``{"method": NAME, "args": [...]}``; the reply is one JSON message
  ``{"success", "value", "pipeid", "error"}`` (newer skopeo adds ``"error_code"``), possibly with
  file descriptors attached (``SCM_RIGHTS``);
* payloads (manifests, blobs) arrive on the read end of a pipe passed with the reply, together with
  a non-zero ``pipeid``. skopeo keeps the write end open until the client calls
  ``FinishPipe(pipeid)``, which waits for the transfer and returns its outcome: this is where a
  digest or size mismatch is reported ("corrupted blob, expecting sha256:...").

Protocol 0.2.x as spoken by skopeo 1.9.3 (Debian 12, protocol 0.2.3) and newer is supported; only
the methods of 0.2.1 are used (``Initialize``, ``OpenImage``, ``GetManifest``, ``GetBlob``,
``FinishPipe``, ``CloseImage``, ``Shutdown``).

Two properties of the server shape this client:

* skopeo handles one request at a time, and ``FinishPipe`` blocks it until the transfer is over.
  Calling ``FinishPipe`` as soon as a blob is opened would therefore serialise all transfers. Blob
  pipes are instead relayed by a thread that calls ``FinishPipe`` once it has received the
  expected number of bytes (or when the pipe stays idle for a while, which also catches transfers
  that failed half-way), so several blobs stream in parallel.
* The read end of a blob pipe never reaches end-of-file before ``FinishPipe``. The descriptor
  handed out by :meth:`ProxyImageSource.open_blob` is the read end of our own pipe, which the
  relay closes after ``FinishPipe`` returned, so callers can simply read it to the end.

Manifest lists are resolved inside skopeo (for the ``platform`` given, through its
``--override-os/--override-arch/--override-variant`` options); skopeo 1.9.3 offers no way to see
the list itself, so :meth:`ProxyImageSource.resolve` never reports walked indexes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

from composefs.errors import ComposefsError, DigestMismatchError, SourceError, wrap
from composefs.oci.documents import SIZE_LIMITS
from composefs.oci.media_types import LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPES
from composefs.oci.platform import Platform, host_platform, parse_platform
from composefs.oci.source import Descriptor, ResolvedManifest

__all__ = ["PROTOCOL_MAJOR_MINOR", "ProxyError", "ProxyImageSource"]

#: The protocol generation this client speaks (the patch level may be anything).
PROTOCOL_MAJOR_MINOR = (0, 2)

# skopeo reads requests into a 32 KiB buffer; replies are small JSON documents.
_MAX_REQUEST = 32 * 1024
_REPLY_BUFFER = 1 << 20
# The largest integer skopeo accepts in a request (JSON numbers are float64 in Go).
_MAX_JSON_INT = (1 << 53) - 1
_CHUNK = 1 << 20
# After this long without data on a blob pipe, FinishPipe is called while the relay goes on
# reading: if skopeo's writer has failed, its error is returned (and the pipe closed); if it is
# only slow, FinishPipe returns once it is done.
_STALL_SECONDS = 5.0
_SHUTDOWN_TIMEOUT = 10.0
_STDERR_TAIL = 4096
# skopeo's sources reading ``docker save`` tars (containers/image ``docker/internal/tarfile``):
# the manifest they make calls every layer gzip, and every layer is served uncompressed
_UNCOMPRESSED_LAYER_TRANSPORTS = ("docker-archive:", "docker-daemon:")


class ProxyError(SourceError):
    """skopeo's image proxy failed, or reported an error for a request.

    ``method`` is the proxy method that failed (``None`` for errors of this client), and
    ``error_code`` the proxy's error classification when it sends one (protocol 0.2.8+).
    """

    def __init__(
        self, message: str, *, method: str | None = None, error_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.method = method
        self.error_code = error_code


class ProxyDigestMismatch(ProxyError, DigestMismatchError):
    """A blob read through the proxy does not match its descriptor's size or digest."""


class ProxyImageSource:
    """An :class:`~composefs.oci.source.ImageSource` reading one image through skopeo.

    ``imgref`` is any reference skopeo understands (``docker://registry/name:tag``,
    ``oci-archive:/path.tar``, ``containers-storage:...``, ...). ``platform``
    (``os/arch[/variant]``) selects the instance of a manifest list; without it skopeo chooses
    the host's. ``extra_args`` are options of ``skopeo experimental-image-proxy`` itself, such as
    ``--tls-verify=false``, ``--authfile=PATH`` or ``--cert-dir=DIR``; ``global_args`` are
    skopeo's global options, given before the subcommand (``--tmpdir=DIR``, ``--debug``, ...).

    skopeo is started and the image opened by the constructor; :meth:`close` (or leaving a
    ``with`` block) closes the image and stops skopeo. All methods may be called from several
    threads: requests are serialised, blob transfers run in parallel.
    """

    def __init__(
        self,
        imgref: str,
        *,
        platform: str | None = None,
        skopeo: str = "skopeo",
        extra_args: Sequence[str] = (),
        global_args: Sequence[str] = (),
    ) -> None:
        self.imgref = imgref
        self._skopeo = skopeo
        self._extra_args = tuple(extra_args)
        self._global_args = tuple(global_args)
        self._platform = self._parse_platform(platform)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._failure: str | None = None
        self._image: int | None = None
        self._converted_configs: set[str] = set()
        self.protocol_version = ""
        self._start()

    # -- lifetime ----------------------------------------------------------------------------

    @staticmethod
    def _parse_platform(platform: str | None) -> Platform | None:
        if platform is None:
            return None
        try:
            return parse_platform(platform)
        except ComposefsError as e:
            raise ProxyError(str(e)) from None

    @staticmethod
    def _same_platform(a: Platform | None, b: Platform | None) -> bool:
        a, b = a or host_platform(), b or host_platform()
        return (a.os, a.architecture, a.effective_variant()) == (
            b.os,
            b.architecture,
            b.effective_variant(),
        )

    def _platform_args(self) -> list[str]:
        """skopeo's global options choosing the instance of a manifest list."""
        wanted = self._platform
        if wanted is None:
            return []
        args = ["--override-os", wanted.os, "--override-arch", wanted.architecture]
        if wanted.variant:
            args += ["--override-variant", wanted.variant]
        return args

    def _start(self) -> None:
        try:
            self._spawn()
            self._initialize()
            try:
                self._image = self._open_image()
            except ProxyError as e:
                raise ProxyError(f"Opening image {self.imgref}") from e
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Closed in close(), or below if skopeo cannot be started.
        stderr = tempfile.TemporaryFile(prefix="composefs-skopeo-")  # noqa: SIM115
        argv = [
            self._skopeo,
            *self._global_args,
            *self._platform_args(),
            "experimental-image-proxy",
            "--sockfd",
            str(theirs.fileno()),
            *self._extra_args,
        ]
        try:
            with theirs:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(theirs.fileno(),),
                )
        except OSError as e:
            ours.close()
            stderr.close()
            message = f"Creating image proxy: cannot run {self._skopeo}"
            if isinstance(e, FileNotFoundError):
                message += (
                    "; the transports other than oci: need it: install the skopeo package "
                    "(apt install skopeo / dnf install skopeo)"
                )
            raise ProxyError(message) from e
        self._sock = ours
        self._stderr = stderr
        self._failure = None

    def _initialize(self) -> None:
        try:
            self.protocol_version = str(self._call("Initialize").value)
            if _parse_version(self.protocol_version)[:2] != PROTOCOL_MAJOR_MINOR:
                raise ProxyError(
                    f"unsupported skopeo image proxy protocol {self.protocol_version!r}"
                    f" (this client speaks {'.'.join(map(str, PROTOCOL_MAJOR_MINOR))}.x)"
                )
        except ProxyError as e:
            raise ProxyError("Creating image proxy") from e

    def _open_image(self) -> int:
        value = self._call("OpenImage", self.imgref).value
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ProxyError(f"invalid image id {value!r} from the image proxy")
        return value

    def close(self) -> None:
        """Closes the image, stops skopeo and waits for it. Safe to call more than once."""
        with self._lock:
            sock, self._sock = self._sock, None
            image, self._image = self._image, None
            if sock is not None:
                if image is not None and self._failure is None:
                    # CloseImage lets skopeo clean up (oci-archive: extracts to a temp dir).
                    with contextlib.suppress(ProxyError):
                        self._request(sock, "CloseImage", (image,))
                if self._failure is None:
                    with contextlib.suppress(OSError):
                        sock.send(_encode("Shutdown", ()))
                sock.close()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=_SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()

    @property
    def pid(self) -> int | None:
        """The process id of skopeo, ``None`` once closed."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def __enter__(self) -> ProxyImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> _Reply:
        """Sends one request and returns its reply; raises :class:`ProxyError` on failure."""
        with self._lock:
            sock = self._sock
            if sock is None:
                raise ProxyError(
                    f"failed to invoke method {method}: the image proxy is closed", method=method
                )
            if self._failure is not None:
                raise ProxyError(self._failure, method=method)
            return self._request(sock, method, args)

    def _request(self, sock: socket.socket, method: str, args: tuple[Any, ...]) -> _Reply:
        payload = _encode(method, args)
        try:
            sock.send(payload)
            data, fds, flags, _ = socket.recv_fds(sock, _REPLY_BUFFER, 2, socket.MSG_CMSG_CLOEXEC)
        except OSError as e:
            raise self._died(method) from e
        except BaseException:
            # e.g. KeyboardInterrupt between request and reply: the next reply would be this
            # one's, so the connection cannot be used any more.
            self._failure = f"a {method} request to the image proxy was interrupted"
            raise
        try:
            if not data:
                raise self._died(method)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ProxyError(f"truncated reply from the image proxy to {method}", method=method)
            reply = _parse_reply(method, data)
            if not reply.success:
                raise ProxyError(
                    f"failed to invoke method {method}: {reply.error}",
                    method=method,
                    error_code=reply.error_code,
                )
            if len(fds) > 1 or (len(fds) == 1) != (reply.pipeid != 0):
                raise ProxyError(
                    f"unexpected reply from the image proxy to {method}:"
                    f" {len(fds)} file descriptor(s) with pipe id {reply.pipeid}",
                    method=method,
                )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        reply.fd = fds[0] if fds else None
        return reply

    def _died(self, method: str) -> ProxyError:
        """Marks the proxy as dead (stopping skopeo if it still runs) and describes why."""
        proc = self._proc
        status = "unknown status"
        if proc is not None:
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            status = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        message = f"skopeo image proxy exited unexpectedly during {method} ({status})"
        tail = self._stderr_tail()
        if tail:
            message += f": {tail}"
        self._failure = message
        return ProxyError(message, method=method)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        fd = self._stderr.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - _STDERR_TAIL)
        return os.pread(fd, size - start, start).decode(errors="replace").strip()

    def _image_id(self, method: str) -> int:
        image = self._image
        if image is None:
            raise ProxyError(
                f"failed to invoke method {method}: the image proxy is closed", method=method
            )
        return image

    # -- ImageSource -------------------------------------------------------------------------

    def resolve(self, platform: str | None = None) -> ResolvedManifest:
        """The image's manifest as skopeo returns it, under the digest skopeo reports.

        For a manifest list, skopeo picks the instance for ``platform`` (or for the platform given
        to the constructor, or the host's). A Docker schema 2 manifest is returned converted to
        OCI, under the digest of the original (what cfsctl stores). If ``platform`` differs from
        the one skopeo was started with, skopeo is restarted with the new one.
        """
        if platform is not None:
            wanted = self._parse_platform(platform)
            if not self._same_platform(wanted, self._platform):
                self.close()
                self._platform = wanted
                self._start()
        try:
            reply = self._call("GetManifest", self._image_id("GetManifest"))
            if not isinstance(reply.value, str) or ":" not in reply.value:
                reply.close()
                raise ProxyError(f"invalid manifest digest {reply.value!r} from the image proxy")
            raw = self._read_pipe(reply, expected=None, limit=SIZE_LIMITS["manifest"])
        except ProxyError as e:
            raise ProxyError(f"Fetching manifest of {self.imgref}") from e
        digest: str = reply.value
        self._note_converted_config(digest, raw)
        return ResolvedManifest(digest=digest, raw=raw)

    def _note_converted_config(self, digest: str, raw: bytes) -> None:
        """Remembers the config of a manifest that skopeo converted to OCI.

        Converting a Docker schema 2 manifest, skopeo also converts its config and references the
        converted config by the digest of that; no registry has that blob, only ``GetFullConfig``
        returns it.
        """
        algorithm, _, value = digest.partition(":")
        if algorithm not in hashlib.algorithms_available:
            return
        if hashlib.new(algorithm, raw).hexdigest() == value:
            return
        with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
            config = json.loads(raw)["config"]["digest"]
            if isinstance(config, str):
                self._converted_configs.add(config)

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """A (small) blob, checked by skopeo and here against the digest and size."""
        context = f"Fetching blob {descriptor.digest}"
        if descriptor.size > SIZE_LIMITS["config"]:
            raise ProxyError(context) from ProxyError(
                f"blob is too large ({descriptor.size} bytes, the limit is {SIZE_LIMITS['config']})"
            )
        if descriptor.digest in self._converted_configs:
            # A config converted by skopeo along with its Docker manifest (see resolve): the
            # bytes come from GetFullConfig, and must hash to the digest the manifest names.
            with contextlib.suppress(ProxyError):
                data = self._full_config()
                _verify(descriptor, data)
                return data
        try:
            reply = self._get_blob(descriptor)
            data = self._read_pipe(reply, expected=_expected_size(reply, descriptor))
            _verify(descriptor, data)
        except ProxyError as e:
            raise wrap(ProxyError, context, e) from e
        return data

    def blob_media_type(self, descriptor: Descriptor) -> str:
        """The media type of what :meth:`open_blob` yields
        (:func:`composefs.oci.source.served_media_type`): a ``docker-archive:`` or
        ``docker-daemon:`` layer comes uncompressed from skopeo, whatever the manifest says."""
        if (
            self.imgref.startswith(_UNCOMPRESSED_LAYER_TRANSPORTS)
            and descriptor.media_type in LAYER_MEDIA_TYPES
        ):
            return LAYER_MEDIA_TYPE
        return descriptor.media_type

    def _full_config(self) -> bytes:
        reply = self._call("GetFullConfig", self._image_id("GetFullConfig"))
        if reply.fd is None:
            raise ProxyError("the image proxy sent no pipe for GetFullConfig")
        return self._read_pipe(reply, expected=None)

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[int]:
        """A readable descriptor streaming a blob; read it to the end.

        Leaving the block waits for the transfer and raises :class:`ProxyError` if skopeo
        reported an error (digest or size mismatch, network failure). The descriptor is closed
        on exit. If the block is left early, the transfer is abandoned.
        """
        context = f"Fetching blob {descriptor.digest}"
        # (no size cap here: a layer is streamed, never held; read_blob caps what it reads)
        try:
            reply = self._get_blob(descriptor)
        except ProxyError as e:
            raise ProxyError(context) from e
        try:
            relay = _Relay(self, reply, _expected_size(reply, descriptor))
        finally:
            reply.close()  # unless the relay took it
        try:
            yield relay.read_fd
        except BaseException as body_error:
            relay.close_reader()
            error = relay.wait()
            # a transport error explains a failure of the caller (such as a digest mismatch)
            if error is not None and not relay.abandoned and isinstance(body_error, Exception):
                raise wrap(ProxyError, context, error) from error
            raise
        relay.close_reader()
        error = relay.wait()
        if error is not None and not relay.abandoned:
            raise wrap(ProxyError, context, error) from error

    def _get_blob(self, descriptor: Descriptor) -> _Reply:
        if not 0 <= descriptor.size <= _MAX_JSON_INT:
            raise ProxyError(f"invalid blob size {descriptor.size}")
        image = self._image_id("GetBlob")
        reply = self._call("GetBlob", image, descriptor.digest, descriptor.size)
        if reply.fd is None:
            raise ProxyError("the image proxy sent no pipe for GetBlob", method="GetBlob")
        return reply

    def _read_pipe(self, reply: _Reply, expected: int | None, limit: int | None = None) -> bytes:
        """Reads a reply's pipe to the end (through a relay), finishing it; more than
        ``limit`` bytes is an error (a document, not a layer, is read here)."""
        try:
            relay = _Relay(self, reply, expected)
        finally:
            reply.close()  # unless the relay took it
        chunks: list[bytes] = []
        total = 0
        too_large = False
        try:
            while block := os.read(relay.read_fd, _CHUNK):
                total += len(block)
                if limit is not None and total > limit:
                    too_large = True
                    break
                chunks.append(block)
        finally:
            relay.close_reader()
            error = relay.wait()
        if too_large:
            raise ProxyError(f"document too large (more than {limit} bytes)")
        if error is not None:
            raise error
        return b"".join(chunks)

    def _finish_pipe(self, pipeid: int) -> None:
        self._call("FinishPipe", pipeid)


class _Reply:
    __slots__ = ("error", "error_code", "fd", "pipeid", "success", "value")

    def __init__(
        self, success: bool, value: Any, pipeid: int, error: str, error_code: str | None
    ) -> None:
        self.success = success
        self.value = value
        self.pipeid = pipeid
        self.error = error
        self.error_code = error_code
        self.fd: int | None = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Relay:
    """Copies a proxy pipe into a pipe of our own and finishes the proxy pipe.

    The thread moves up to ``expected`` bytes (all of them if ``None``) from skopeo's pipe into
    ours with ``splice``, then calls ``FinishPipe`` from a helper thread while it keeps reading
    (and dropping) anything more until skopeo closes its end; only then is our write end closed,
    so the reader sees end-of-file after the outcome is known. If the reader goes away first,
    skopeo's pipe is closed too (so its writer stops) and the pipe is still finished.
    """

    def __init__(self, source: ProxyImageSource, reply: _Reply, expected: int | None) -> None:
        assert reply.fd is not None
        self._source = source
        self._pipeid = reply.pipeid
        self._expected = expected
        self.error: BaseException | None = None
        self.abandoned = False
        self._finisher: threading.Thread | None = None
        self._finish_error: BaseException | None = None
        self._reader_open = True
        self.read_fd, self._write_fd = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, _CHUNK)
            os.set_blocking(reply.fd, True)
            self._thread = threading.Thread(
                target=self._run, name="composefs-skopeo-pipe", daemon=True
            )
            self._src = reply.fd
            reply.fd = None  # ours now
            self._thread.start()
        except BaseException:
            os.close(self.read_fd)
            os.close(self._write_fd)
            if reply.fd is None:
                os.close(self._src)
            raise

    def _start_finish(self) -> None:
        if self._finisher is None:
            self._finisher = threading.Thread(
                target=self._finish, name="composefs-skopeo-finish", daemon=True
            )
            self._finisher.start()

    def _finish(self) -> None:
        try:
            self._source._finish_pipe(self._pipeid)
        except BaseException as e:
            self._finish_error = e

    def _run(self) -> None:
        expected = self._expected
        copied = 0
        src: int | None = self._src
        try:
            poller = select.poll()
            poller.register(self._src, select.POLLIN)
            if expected is None:
                self._start_finish()
            while True:
                if expected is not None and copied >= expected:
                    self._start_finish()
                timeout = None if self._finisher is not None else _STALL_SECONDS * 1000
                if not poller.poll(timeout):
                    self._start_finish()
                    continue
                if expected is None or copied < expected:
                    want = _CHUNK if expected is None else min(_CHUNK, expected - copied)
                    try:
                        n = os.splice(self._src, self._write_fd, want)
                    except BrokenPipeError:
                        # Our reader is gone: stop skopeo's writer (EPIPE) and finish the pipe.
                        self.abandoned = True
                        poller.unregister(self._src)
                        os.close(self._src)
                        src = None
                        self._start_finish()
                        break
                else:
                    n = len(os.read(self._src, _CHUNK))  # more than expected: drop it
                if n == 0:
                    break
                copied += n
        except BaseException as e:
            self.error = ProxyError(f"reading the image proxy pipe: {e}")
            if src is not None:
                os.close(src)  # so that skopeo's writer stops and FinishPipe cannot hang
                src = None
            self._start_finish()
        finally:
            if self._finisher is not None:
                self._finisher.join()
            if src is not None:
                os.close(src)
            os.close(self._write_fd)
        if self.error is None and self._finish_error is not None:
            self.error = self._finish_error
        elif self.error is None and expected is not None and copied < expected:
            self.error = ProxyError(
                f"the image proxy sent {copied} bytes, expected {expected}", method="GetBlob"
            )

    def close_reader(self) -> None:
        if self._reader_open:
            self._reader_open = False
            os.close(self.read_fd)

    def wait(self) -> BaseException | None:
        self._thread.join()
        return self.error


def _encode(method: str, args: Sequence[Any]) -> bytes:
    payload = json.dumps({"method": method, "args": list(args)}).encode()
    if len(payload) > _MAX_REQUEST:
        raise ProxyError(f"request {method} too large for the image proxy ({len(payload)} bytes)")
    return payload


def _parse_reply(method: str, data: bytes) -> _Reply:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        success = doc.get("success")
        pipeid = doc.get("pipeid", 0) or 0
        if not isinstance(success, bool) or not isinstance(pipeid, int):
            raise ValueError("missing or invalid 'success' or 'pipeid'")
    except RecursionError:
        raise ProxyError(
            f"invalid reply from the image proxy to {method}: nested too deeply"
        ) from None
    except ValueError as e:
        raise ProxyError(f"invalid reply from the image proxy to {method}: {e}") from None
    code = doc.get("error_code")
    return _Reply(
        success, doc.get("value"), pipeid, str(doc.get("error") or ""), str(code) if code else None
    )


def _parse_version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ProxyError(f"invalid image proxy protocol version {text!r}") from None


def _expected_size(reply: _Reply, descriptor: Descriptor) -> int:
    """What skopeo will write: the size it reports (-1 if unknown, then the descriptor's)."""
    value = reply.value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return descriptor.size


def _verify(descriptor: Descriptor, data: bytes) -> None:
    if len(data) != descriptor.size:
        raise ProxyDigestMismatch(
            f"blob size mismatch: expected {descriptor.size}, got {len(data)}"
        )
    algorithm, _, expected = descriptor.digest.partition(":")
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise ProxyError(f"unsupported digest algorithm in {descriptor.digest}")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ProxyDigestMismatch(
            f"blob digest mismatch: expected {descriptor.digest}, got {algorithm}:{actual}"
        )
