"""A small HTTP server for tests of remote reads: serves one folder on 127.0.0.1, honours
``Range: bytes=a-b``, counts every body byte it sends, and can misbehave on purpose.

>>> with serve(folder) as server:                                     # doctest: +SKIP
...     urllib.request.urlopen(server.url + "model.safetensors").read()
...     server.bytes_sent, server.requests[-1].status
(1234, 200)

Modes (``serve(folder, mode=...)``):

- ``"range"`` (default): a well-behaved static file server (206 + Content-Range for a Range request).
- ``"no-range"``: ignores the Range header and answers 200 with the whole body.
- ``"401"``, ``"403"``, ``"404"``: every request gets that status.
- ``"hang"``: accepts every connection and never answers (until the block ends).
- ``"stall"``: answers a file's headers, then never sends its body.

``api_body=b"..."`` answers every Hub API route (``hub=`` set) with that body as JSON: an answer of
the wrong shape.

``drop_after=N`` cuts the connection after N body bytes of any response longer than that (a
connection that drops mid-transfer); ``drops=k`` cuts only the first k such responses (``None``:
every one). ``hub="org/name"`` also answers the few Hugging Face Hub API routes that
``huggingface_hub``'s ``HfApi`` / ``HfFileSystem`` use, so that ``HF_ENDPOINT=server.url`` serves
the folder as that model repository at revision ``main`` = ``server.sha``. ``revisions={"step0":
folder0, ...}`` adds more: each name is a branch (listed by ``HfApi.list_repo_refs``) whose files
are that folder's, at commit ``server.shas[name]``.

Import it by path (the tests folder is not a package)::

    spec = importlib.util.spec_from_file_location("http_server", Path(__file__).parent / "http_server.py")
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

MODES = ("range", "no-range", "401", "403", "404", "hang", "stall")
SEND_PIECE = 1 << 20  # bytes handed to sendfile at a time (the unit of counting and of drops)


@dataclass
class Request:
    """One request the server answered."""

    method: str
    path: str
    range: str | None  # the Range header as sent
    status: int
    sent: int = 0  # body bytes actually written to the socket
    headers: dict = field(default_factory=dict)  # the request's headers, as sent


@dataclass
class Server:
    """What a test sees of a running server."""

    url: str  # "http://127.0.0.1:PORT/", ending in "/"
    folder: Path
    mode: str = "range"
    drop_after: int | None = None
    drops: int | None = None  # None: cut every response longer than drop_after
    hub: str | None = None  # "org/name" served as a Hub model repository
    sha: str = ""  # the commit the repository's "main" resolves to
    revisions: dict = field(default_factory=dict)  # more branches: name -> folder
    shas: dict = field(default_factory=dict)  # branch name -> its commit
    _log: list[Request] = field(default_factory=list, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _cuts: int = 0
    api_body: bytes | None = None  # every Hub API route answers this (a hostile Hub)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)  # the block ended
    _busy: int = 0  # answers being written now

    @property
    def requests(self) -> list[Request]:
        """Every request answered so far, oldest first."""
        return self._settled()

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent so far, over every response (files and API answers alike)."""
        return sum(r.sent for r in self._settled())

    def file_bytes_sent(self, name: str | None = None) -> int:
        """Body bytes sent from the folder's files (``name``: only that file), excluding API answers."""
        return sum(r.sent for r in self._settled() if r.path.startswith("file:") and
                   (name is None or r.path == "file:" + name))

    def _settled(self, timeout: float = 10.0) -> list[Request]:
        """The requests, once no answer is still being written (a client can have read a whole body
        before the thread that sent it has counted it)."""
        with self._lock:
            self._lock.wait_for(lambda: self._busy == 0, timeout=timeout)
            return list(self._log)

    def reset(self) -> None:
        """Forget the requests seen so far (and the drops already made)."""
        self._settled()
        with self._lock:
            self._log.clear()
            self._cuts = 0

    def _record(self, request: Request) -> None:
        with self._lock:
            self._log.append(request)

    def _cut_at(self, length: int) -> int | None:
        """Where to cut a body of ``length`` bytes, or None to send it whole."""
        with self._lock:
            if self.drop_after is None or length <= self.drop_after:
                return None
            if self.drops is not None and self._cuts >= self.drops:
                return None
            self._cuts += 1
            return self.drop_after


@contextlib.contextmanager
def serve(folder, mode: str = "range", *, drop_after: int | None = None, drops: int | None = None,
          hub: str | None = None, revisions: dict | None = None,
          api_body: bytes | None = None) -> Iterator[Server]:
    """Serve ``folder`` on 127.0.0.1 (a free port) in a background thread until the block ends.

    >>> with serve(tmp_path, mode="no-range") as server:               # doctest: +SKIP
    ...     server.url
    'http://127.0.0.1:40123/'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    state = Server(url="", folder=Path(folder), mode=mode, drop_after=drop_after, drops=drops, hub=hub,
                   sha=hashlib.sha1(f"{hub}:{Path(folder).resolve()}".encode()).hexdigest(),
                   revisions={k: Path(v) for k, v in (revisions or {}).items()}, api_body=api_body)
    state.shas = {k: hashlib.sha1(f"{hub}:{k}:{v.resolve()}".encode()).hexdigest() for k, v in state.revisions.items()}
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state._stop.set()  # hanging answers end
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections left open by a client never block shutdown

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (as refusing clients do) is normal here; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    state: Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    timeout = 30

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        if self.state.mode == "hang":  # accepted, never answered (not counted: nothing is ever sent)
            self.state._stop.wait()
            self.close_connection = True
            return
        with self.state._lock:
            self.state._busy += 1
        try:
            self._route(head)
        finally:
            with self.state._lock:
                self.state._busy -= 1
                self.state._lock.notify_all()

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        mode = self.state.mode
        if mode in ("401", "403", "404"):
            return self._error(int(mode), path)
        if self.state.hub is not None:
            return self._hub(path, head)
        return self._file(path.lstrip("/"), head)

    # -- files -----------------------------------------------------------------------------------

    def _file(self, name: str, head: bool, folder: Path | None = None, commit: str | None = None) -> None:
        folder = self.state.folder if folder is None else folder
        target = (folder / name).resolve()
        root = folder.resolve()
        if not name or root not in target.parents or not target.is_file():
            return self._error(404, "file:" + name, code="EntryNotFound")
        size = target.stat().st_size
        span = None if self.state.mode == "no-range" else _parse_range(self.headers.get("Range"), size)
        if span == "unsatisfiable":
            return self._error(416, "file:" + name, extra={"Content-Range": f"bytes */{size}"})
        start, stop = span if span else (0, size)
        status = 206 if span else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "none" if self.state.mode == "no-range" else "bytes")
        self.send_header("ETag", _etag(target))
        if commit is not None:  # the Hub names the commit it served from (huggingface_hub's downloads need it)
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Last-Modified", email.utils.formatdate(target.stat().st_mtime, usegmt=True))
        if span:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        request = Request(self.command, "file:" + name, self.headers.get("Range"), status, headers=dict(self.headers))
        self.state._record(request)
        if self.state.mode == "stall" and not head:  # the headers, then silence
            self.wfile.flush()
            self.state._stop.wait()
            self.close_connection = True
            return
        if not head:
            self._send_body(target, start, stop, request)

    def _send_body(self, target: Path, start: int, stop: int, request: Request) -> None:
        """sendfile the bytes in pieces, counting each; cut the connection where asked to."""
        cut = self.state._cut_at(stop - start)
        end = stop if cut is None else start + cut
        with open(target, "rb") as f:
            offset = start
            try:
                while offset < end:
                    n = self.connection.sendfile(f, offset, min(SEND_PIECE, end - offset))
                    if n == 0:
                        break
                    offset += n
                    with self.state._lock:
                        request.sent += n
            except OSError:  # the client went away (it refused what it got): stop
                self.close_connection = True
                return
        if cut is not None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    # -- the Hub API -----------------------------------------------------------------------------

    def _hub(self, path: str, head: bool) -> None:
        repo, sha = self.state.hub, self.state.sha
        if self.state.api_body is not None and path.startswith("/api/"):
            return self._raw_json(self.state.api_body, path)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree|refs)(?:/([^/]+))?(/.*)?)?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or resolve
        if match is None:
            return self._error(404, path)
        if match.group(1) != repo:
            return self._error(404, path, code="RepoNotFound")
        if api and api.group(2) == "refs":
            branches = [{"name": "main", "ref": "refs/heads/main", "targetCommit": sha}]
            branches += [{"name": k, "ref": f"refs/heads/{k}", "targetCommit": v} for k, v in self.state.shas.items()]
            return self._json({"branches": branches, "tags": [], "converts": []}, path)
        revision = (api.group(3) or "main") if api else resolve.group(2)
        by_sha = {v: k for k, v in self.state.shas.items()}
        name = by_sha.get(revision, revision)
        if revision in ("main", sha):
            folder = self.state.folder
        elif name in self.state.revisions:
            folder, sha = self.state.revisions[name], self.state.shas[name]
        else:
            return self._error(404, path, code="RevisionNotFound")
        if resolve:
            return self._file(resolve.group(3), head, folder, commit=sha)
        if api.group(2) == "tree":
            return self._json(self._tree((api.group(4) or "").strip("/"), folder), path)
        siblings = [{"rfilename": p.relative_to(folder).as_posix()}
                    for p in sorted(folder.rglob("*")) if p.is_file()]
        self._json({"id": repo, "modelId": repo, "sha": sha, "private": False, "siblings": siblings}, path)

    def _tree(self, sub: str, root: Path | None = None) -> list[dict]:
        """The entries of one folder of the repository, as the Hub's tree API lists them."""
        root = self.state.folder if root is None else root
        folder = root / sub
        entries = []
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            rel = p.relative_to(root).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "oid": _etag(p).strip('"'), "path": rel})
            else:
                entries.append({"type": "file", "oid": _etag(p).strip('"'), "size": p.stat().st_size, "path": rel})
        return entries

    # -- small answers ---------------------------------------------------------------------------

    def _json(self, doc, path: str) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        request = Request(self.command, "api:" + path, self.headers.get("Range"), 200, headers=dict(self.headers))
        self.state._record(request)
        if self.command != "HEAD":
            self.wfile.write(body)
            with self.state._lock:
                request.sent = len(body)

    def _raw_json(self, body: bytes, path: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.state._record(Request(self.command, "api:" + path, None, 200, sent=len(body)))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, path: str, code: str | None = None, extra: dict | None = None) -> None:
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if code and self.state.hub is not None:
            self.send_header("X-Error-Code", code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        request = Request(self.command, path, self.headers.get("Range"), status, headers=dict(self.headers))
        self.state._record(request)
        if self.command != "HEAD":
            self.wfile.write(body)
            with self.state._lock:
                request.sent = len(body)


def _parse_range(header: str | None, size: int):
    """``(start, stop)`` for a single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range; None to
    send the whole file (no header, or one this server does not understand, as RFC 9110 allows);
    ``"unsatisfiable"`` when it starts past the end (or ends before it starts, or is a suffix of
    an empty file)."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if m is None or (m[1] == "" and m[2] == ""):
        return None
    if m[1] == "":  # the last n bytes
        n = int(m[2])
        return (max(0, size - n), size) if n and size else "unsatisfiable"
    start = int(m[1])
    stop = size if m[2] == "" else min(size, int(m[2]) + 1)
    if start >= size or stop <= start:
        return "unsatisfiable"
    return start, stop


def _etag(path: Path) -> str:
    st = os.stat(path)
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
