"""HTTP byte ranges for remote sources: checked, resumed after a drop, and bounded in time.

Every request has a connect deadline and a read deadline (each wait for bytes), and all the
requests of one load share a total deadline: a server that accepts the connection and never
answers is refused after one read deadline, and nothing is retried past the total. The three
are settable through the environment (seconds), e.g. for tests that want a 2-second answer::

    BLACKHOLES_HTTP_CONNECT_S=10  BLACKHOLES_HTTP_READ_S=60  BLACKHOLES_HTTP_DEADLINE_S=3600

>>> deadlines({"BLACKHOLES_HTTP_READ_S": "2"})
Deadlines(connect=10.0, read=2.0, total=3600.0)
>>> check_url("http://[::1/model.safetensors")
Traceback (most recent call last):
...
blackholes.errors.BlackholesError: not a URL that can be read: http://[::1/model.safetensors (Invalid IPv6 URL)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

from blackholes.errors import BlackholesError

RANGE_BYTES = 256 << 20  # bytes asked for in one HTTP request, streamed in pieces; the unit of retrying
TRIES = 3  # attempts per request (resuming where the last one stopped) before giving up
BACKOFF_S = 0.5  # wait before the 2nd attempt; doubled before each later one
READ_PIECE = 16 << 20  # a response body is read into the array this much at a time (progress, counting)
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # worth another try
# seconds: (environment variable, default)
CONNECT_S = ("BLACKHOLES_HTTP_CONNECT_S", 10.0)  # to open a connection
READ_S = ("BLACKHOLES_HTTP_READ_S", 60.0)  # for the answer, and for each wait for more of the body
DEADLINE_S = ("BLACKHOLES_HTTP_DEADLINE_S", 3600.0)  # every request of one load together


@dataclass(frozen=True)
class Deadlines:
    connect: float
    read: float
    total: float


def deadlines(env=None) -> Deadlines:
    """The connect, read and total deadlines (seconds) from the environment, else the defaults."""
    env = os.environ if env is None else env
    out = []
    for name, default in (CONNECT_S, READ_S, DEADLINE_S):
        text = env.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            value = -1.0
        if not 0 < value < 1e9:
            raise BlackholesError(f"{name}={text!r}: give a number of seconds above 0")
        out.append(value)
    return Deadlines(*out)


def check_url(url: str) -> str:
    """``url`` if it can be requested (a host, a port in range, no spaces or control characters);
    else one line saying why."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError as e:
        raise BlackholesError(f"not a URL that can be read: {url} ({why(e)})") from None
    if not parts.hostname:
        raise BlackholesError(f"not a URL that can be read: {url} (no host)")
    bad = next((c for c in url if c.isspace() or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise BlackholesError(f"not a URL that can be read: {url} (it holds {bad!r}; percent-encode it)")
    return url


class Fetched:
    """Body bytes received over the network, all files of one load together."""

    def __init__(self):
        self.total = 0



class NotFound(BlackholesError):
    """HTTP 404, or a missing file: a folder's optional files may be absent."""


class Transient(Exception):
    """A failure worth another try: a dropped connection, a short body, a 5xx."""


class Http:
    """How requests go out: the standard library's ``urllib`` (proxies from the environment,
    redirects followed, credentials sent only to their own host), plus headers every request
    carries (a Hub token). A response body is read straight into the tensor's array
    (``readinto``), so a fetch costs what a plain download of the same bytes costs.

    Deadlines (:func:`deadlines`): each connection gets ``connect`` seconds to open and ``read``
    seconds for every wait after; all requests of this object share ``total``, enforced by a
    watchdog that shuts their sockets when it passes (a server dripping one byte a minute is cut
    too). :meth:`finish` stops the watchdog."""

    def __init__(self, headers: dict | None = None, auth_hint: str = "", limits: Deadlines | None = None):
        self.headers = dict(headers or {})
        self.auth_hint = auth_hint
        self.limits = limits or deadlines()
        self.started = time.monotonic()
        self.expired = False
        self.sockets: weakref.WeakSet = weakref.WeakSet()
        self.watchdog: threading.Timer | None = None
        self.opener = _opener(self)

    def remaining(self) -> float:
        return self.limits.total - (time.monotonic() - self.started)

    def open(self, url: str, headers: dict, method: str = "GET"):
        """The response to one request, whatever its status (an error status is a response too)."""
        import urllib.error
        import urllib.request

        left = self.remaining()
        if left <= 0 or self.expired:
            raise self.overdue()
        if self.watchdog is None:
            self.watchdog = threading.Timer(left, self._expire)
            self.watchdog.daemon = True
            self.watchdog.start()
        request = urllib.request.Request(url, headers={**self.headers, **headers}, method=method)
        try:
            return self.opener.open(request, timeout=min(self.limits.connect, left))
        except urllib.error.HTTPError as e:  # 4xx/5xx: still a response, with status and headers
            return e

    def overdue(self) -> BlackholesError:
        return BlackholesError(f"the remote reads took longer than the total deadline of {self.limits.total:g} s "
                               f"({DEADLINE_S[0]}); gave up, nothing is reported from partial data")

    def _expire(self) -> None:
        self.expired = True
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked on it

    def finish(self) -> None:
        """Stop the watchdog (the load is over)."""
        if self.watchdog is not None:
            self.watchdog.cancel()


def _opener(owner: Http):
    """urllib's opener whose connections wait at most the connect deadline to open, then at most
    the read deadline for each read, their sockets known to ``owner``'s watchdog."""
    import http.client
    import urllib.request

    def connection(base):
        class Connection(base):
            def connect(self):
                super().connect()  # under the connect deadline (urllib's timeout)
                self.sock.settimeout(max(0.001, min(owner.limits.read, owner.remaining())))
                owner.sockets.add(self.sock)

        return Connection

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(connection(http.client.HTTPConnection), req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(connection(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(_redirects(), Plain(), Secure())


def _redirects():
    """A redirect handler that drops credentials when a redirect leaves their host (the Hub's
    ``resolve/`` URLs send large files on to a CDN, which must not see the token)."""
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
                for name in [h for h in new.headers if h.lower() == "authorization"]:
                    del new.headers[name]
            return new

    return Redirects()


class HttpFile:
    """One file on an HTTP server, read only through byte ranges whose answers are checked:
    206, the exact ``Content-Range`` asked for, the same file size (and ETag) every time."""

    def __init__(self, url: str, http: Http, fetched: Fetched, *, name: str | None = None,
                 revision: str | None = None):
        self.url, self.http, self.fetched = url, http, fetched
        self.name = name or url  # how messages and Matrix.url call it
        self.revision = revision  # the commit it was resolved at (hf://); else its ETag, once seen
        self.pinned = revision is not None  # a commit cannot change: no ETag check needed
        self.size: int | None = None
        self.etag: str | None = None
        self.modified: str | None = None

    def probe(self, n: int) -> bytearray:
        """The first ``n`` bytes (fewer if the file is shorter), in one ranged request whose
        answer proves the server honours ``Range``; learns the file's size."""
        out = bytearray(n)
        got = self._range(0, memoryview(out), None, short_ok=True)
        return out[:got]  # a copy: a retried attempt's traceback may still hold a view of ``out``

    def read(self, start: int, stop: int) -> bytearray:
        out = bytearray(stop - start)
        self.read_into(start, memoryview(out))
        return out

    def read_into(self, start: int, out: memoryview, update=None) -> None:
        """Fill ``out`` with the bytes from ``start``: one request per :data:`RANGE_BYTES`, its body
        read into ``out`` as it arrives. (Smaller requests cost a round trip and a server wake-up
        each: with 16 MiB ones a fetch ran at ~0.6x a plain download on the loaded test machine.)"""
        for offset in range(0, len(out), RANGE_BYTES):
            self._range(start + offset, out[offset : offset + RANGE_BYTES], update)

    def _range(self, start: int, out: memoryview, update, short_ok: bool = False) -> int:
        """One range, resumed after a dropped connection where it stopped; returns bytes read."""
        done, want = 0, len(out)

        def attempt() -> None:
            nonlocal done, want
            got = [0]
            try:
                self._get_range(start + done, out[done:want], got, update, short_ok)
            finally:
                done += got[0]
                if short_ok and self.size is not None:
                    want = min(want, max(0, self.size - start))
            if done < want:
                raise Transient(f"only {done:,} of {want:,} bytes arrived")

        self._retrying(f"reading bytes {start:,}-{start + len(out) - 1:,}", attempt)
        return done

    def _get_range(self, start: int, out: memoryview, got: list, update, short_ok: bool) -> None:
        stop = start + len(out)
        with self.http.open(self.url, {"Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}) as r:
            length = self._check_range(r, start, stop, short_ok)
            self._stream(r, out[:length], got, update)

    def _check_range(self, r, start: int, stop: int, short_ok: bool) -> int:
        """The body length of a good answer to ``bytes=start-(stop-1)``; refuse any other, unread."""
        if r.status != 206:
            r.close()  # never read the body of an answer we refuse
            if r.status == 200:
                size = r.headers.get("Content-Length")
                whole = f" ({int(size):,} bytes)" if size and size.isdigit() else ""
                raise BlackholesError(
                    f"the server ignores Range requests (it answered bytes {start:,}-{stop - 1:,} with the whole "
                    f"file{whole}); blackholes reads only a header and one tensor, never a whole file: {self.name}"
                )
            raise self._status_error(r.status, r.reason, start, stop)
        span = content_range(r.headers.get("Content-Range", ""))
        if span is None:
            r.close()
            raise BlackholesError(f"the server sent a byte range without a usable Content-Range "
                                  f"({r.headers.get('Content-Range')!r}): {self.name}")
        first, last, total = span
        self._learn(total, r.headers)
        if (first, last) != (start, (min(stop, total) if short_ok else stop) - 1):
            r.close()
            raise BlackholesError(f"asked for bytes {start:,}-{stop - 1:,}, the server sent bytes "
                                  f"{first:,}-{last:,}: {self.name}")
        encoding = (r.headers.get("Content-Encoding") or "identity").strip().lower()
        declared = r.headers.get("Content-Length")
        if encoding != "identity" or (declared is not None and declared.strip() != str(last - first + 1)):
            r.close()
            raise BlackholesError(f"the server's answer for bytes {start:,}-{last:,} is not those raw bytes "
                                  f"(Content-Encoding {encoding!r}, Content-Length {declared}): {self.name}")
        return last - first + 1

    def _stream(self, r, out: memoryview, got: list, update) -> None:
        """Read the body straight into ``out``, a piece at a time, counting every byte."""
        while got[0] < len(out):
            n = r.readinto(out[got[0] : got[0] + READ_PIECE])
            if self.http.expired:
                raise self.http.overdue()
            if not n:
                raise Transient(f"the connection closed after {got[0]:,} of {len(out):,} bytes")
            got[0] += n
            self.fetched.total += n
            if update is not None:
                update(n)
        if r.headers.get("Content-Length") is None and r.read(1):  # a body without a declared length
            raise BlackholesError(f"the server sent more than the {len(out):,} bytes asked for: {self.name}")

    def _learn(self, total: int, headers) -> None:
        """Remember the file's size and version; refuse an answer from a different version."""
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        if self.size is None:
            self.size, self.etag, self.modified = total, etag, modified
            if self.revision is None and etag:
                self.revision = etag.removeprefix("W/").strip('"')
            return
        changed = total != self.size or (not self.pinned and etag and self.etag and etag != self.etag)
        if changed:
            raise BlackholesError(f"the file changed on the server while it was read (size {self.size:,}, "
                                  f"ETag {self.etag} -> size {total:,}, ETag {etag}); run again: {self.name}")

    def _status_error(self, status: int, reason, start: int, stop: int) -> Exception:
        if status in RETRY_STATUS:
            return Transient(f"HTTP {status} {reason or ''}".strip())
        if status == 404:
            return NotFound(f"not found (HTTP 404): {self.name}")
        if status in (401, 403):
            what = "401 Unauthorized: credentials needed" if status == 401 else "403 Forbidden"
            return BlackholesError(f"access denied (HTTP {what}){self.http.auth_hint}: {self.name}")
        if status == 416:
            return BlackholesError(f"the server says bytes {start:,}-{stop - 1:,} lie outside the file "
                                   f"(HTTP 416): {self.name}")
        return BlackholesError(f"the server answered HTTP {status} {reason or ''}: {self.name}".replace("  ", " "))

    def read_whole(self, limit: int) -> bytes | None:
        """The whole (small) file, e.g. config.json; None if the server has no such file."""
        out = []

        def attempt() -> None:
            with self.http.open(self.url, {}) as r:
                if r.status != 200:
                    r.close()
                    raise self._status_error(r.status, r.reason, 0, limit)
                body = r.read(limit + 1)
                self.fetched.total += len(body)
                if len(body) > limit:
                    raise BlackholesError(f"{self.name} is larger than {limit:,} bytes; not a model's JSON file")
                out[:] = [body]

        try:
            self._retrying("reading", attempt)
        except NotFound:
            return None
        return out[0]

    def validator(self) -> str | None:
        """What tells this version of the file from another (for the cache), or None if the server
        gives nothing usable; a HEAD request (no body) when nothing was read yet."""
        if self.pinned:
            return f"revision {self.revision}"
        if self.size is None:
            try:
                self._retrying("HEAD", self._head)
            except BlackholesError:
                return None
        if not (self.etag or self.modified):
            return None
        return json.dumps([self.size, self.etag, self.modified])

    def _head(self) -> None:
        with self.http.open(self.url, {"Accept-Encoding": "identity"}, method="HEAD") as r:
            length = r.headers.get("Content-Length") or ""
            if r.status != 200 or not length.isdigit():
                raise BlackholesError(f"HEAD answered HTTP {r.status}: {self.name}")
            self._learn(int(length), r.headers)

    def _retrying(self, what: str, attempt) -> None:
        """Run ``attempt()`` up to :data:`TRIES` times while it fails in a way worth retrying."""
        import http.client
        import urllib.error

        for failure in range(1, TRIES + 1):
            try:
                return attempt()
            except Transient as e:
                reason = str(e)
            except urllib.error.URLError as e:  # no connection (error statuses are answers, see Http.open)
                if isinstance(e.reason, TimeoutError):
                    raise self._silent(what) from None
                if self.size is None:  # never reached it: an address that is wrong, not a hiccup
                    raise BlackholesError(f"cannot reach {self.name}: {why(e.reason)}") from None
                reason = why(e.reason)
            except TimeoutError:  # a server that stops sending is not a hiccup worth waiting for again
                raise self._silent(what) from None
            except http.client.InvalidURL as e:
                raise BlackholesError(f"not a URL that can be read: {self.name} ({why(e)})") from None
            except (http.client.HTTPException, OSError) as e:  # dropped, reset mid-way
                reason = why(e) if str(e) else type(e).__name__
            except ValueError as e:
                raise BlackholesError(f"not a URL that can be read: {self.name} ({why(e)})") from None
            if self.http.expired:
                raise self.http.overdue()
            if failure < TRIES:
                if self.http.remaining() <= BACKOFF_S * 2 ** (failure - 1):
                    raise self.http.overdue()
                time.sleep(BACKOFF_S * 2 ** (failure - 1))
        raise BlackholesError(f"{what} of {self.name} failed {TRIES} times (last: {reason}); "
                              f"gave up, nothing is reported from partial data")

    def _silent(self, what: str) -> BlackholesError:
        if self.http.expired or self.http.remaining() < 0.5:  # the socket waited until the total deadline
            return self.http.overdue()
        return BlackholesError(f"{what} of {self.name}: no answer for {self.http.limits.read:g} s ({READ_S[0]}); "
                               f"gave up, nothing is reported from partial data")


def content_range(text: str) -> tuple[int, int, int] | None:
    """``(first, last, total)`` of ``bytes first-last/total``; None for anything else."""
    m = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+)", text.strip())
    if m is None or int(m[2]) < int(m[1]) or int(m[3]) <= int(m[2]):
        return None
    return int(m[1]), int(m[2]), int(m[3])


def why(e: BaseException) -> str:
    """A one-line reason from a network exception."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


