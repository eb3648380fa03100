"""Remote safetensors, read by byte range: ``https://`` URLs, ``hf://`` models, any fsspec URL.

Only three kinds of bytes cross the network: a model folder's ``config.json`` and
``model.safetensors.index.json``; a file's 8-byte header length and JSON header (one small
ranged request, which is also the proof that the server honours ``Range``); and the chosen
tensor's own byte range, streamed in chunks into one preallocated array. A server that
answers a ranged request with the whole file is refused before any of its body is read, so a
multi-GB file is never downloaded by surprise.

>>> is_remote("https://example.org/model.safetensors"), is_remote("hf://org/name"), is_remote("a/b")
(True, True, False)
>>> m = load_remote("hf://Qwen/Qwen3-4B-Instruct-2507", progress=True)   # doctest: +SKIP
>>> m.key, m.shape, m.revision[:7], m.bytes_read                        # doctest: +SKIP
('model.embed_tokens.weight', (151936, 2560), 'cdbee75', 778309532)

``http(s)://`` files, and the files of an ``hf://`` repository (whose commit, listing and token
come from ``huggingface_hub``'s ``HfFileSystem`` / ``HfApi``), are read with checked ranged GETs
from the standard library, straight into the array; other URLs through their own fsspec
filesystem's ``cat_file(path, start, end)``. Why not fsspec's HTTP filesystem for the bytes:
its ``cat_file`` reads the whole body of a 200 answer (as ``HfFileSystem``'s ranged reads do),
and its aiohttp stream measured 0.6x the speed of a plain download of the same range here
(twice the CPU per byte); ``readinto`` costs exactly what the plain download costs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import STORAGE_DTYPES
from blackholes.io.safetensors import Header, TensorInfo, header_length, parse_header, tensor_info
from blackholes.sources.local import check_2d, json_object
from blackholes.sources.matrix import Matrix
from blackholes.sources.names import is_tied, pick_in_file, pick_in_model, short_list

RANGE_BYTES = 256 << 20  # bytes asked for in one HTTP request, streamed in pieces; the unit of retrying
CHUNK_BYTES = 16 << 20  # bytes of one cat_file call on other fsspec filesystems (held in memory at once)
PROBE_BYTES = 64 << 10  # the first request of a file: the header length and (usually) all of the header
JSON_LIMIT = 64 << 20  # config.json / the index larger than this is refused
TRIES = 3  # attempts per request (resuming where the last one stopped) before giving up
BACKOFF_S = 0.5  # wait before the 2nd attempt; doubled before each later one
READ_PIECE = 16 << 20  # a response body is read into the array this much at a time (progress, counting)
TIMEOUT_S = 60  # connecting, and each read: a stalled connection counts as dropped
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # worth another try
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def is_remote(source) -> bool:
    """Whether ``source`` names a remote location: ``http(s)://``, ``hf://``, or a protocol fsspec knows.

    >>> is_remote("s3://bucket/model.safetensors"), is_remote("memory://m/x"), is_remote("nope://x")
    (True, True, False)
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    m = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*)://", os.fspath(source))
    if m is None:
        return False
    protocol = m.group(1).lower()
    if protocol in ("http", "https", "hf"):
        return True
    import fsspec

    return protocol in fsspec.available_protocols()


def load_remote(source: str, key: str | None = None, matrix: str | None = None, *,
                cache: str | os.PathLike | None = None, progress: bool = False) -> Matrix:
    """Fetch one embedding matrix from a remote safetensors file or model folder, by byte range.

    ``source``: ``https://host/.../model.safetensors``, a folder URL ending in ``/``,
    ``hf://org/name[@revision][/file.safetensors]``, or any fsspec URL (``s3://...``, ``memory://...``).
    ``key`` / ``matrix`` choose the tensor as for a local file or folder. ``cache`` (a folder) keeps
    the fetched tensor bytes; a later call with the same arguments memory-maps them (``bytes_read == 0``)
    once the remote file is seen unchanged. ``progress`` shows a bar (bytes, speed) on stderr.

    >>> m = load_remote(server.url + "model.safetensors", key="lm_head.weight")   # doctest: +SKIP
    >>> m.bytes_read <= m.array.nbytes + (1 << 20)                                # doctest: +SKIP
    True
    """
    if matrix not in (None, "input", "output"):
        raise BlackholesError(f"matrix must be 'input' or 'output', not {matrix!r}")
    source = os.fspath(source)
    site, lone = _locate(source)
    store = _Cache(cache) if cache is not None else None
    if store is not None:
        hit = store.lookup(source, key, matrix, site, lone)
        if hit is not None:
            return hit
    choice = _choose_in_file(lone, key, matrix) if lone is not None else _choose_in_folder(site, key, matrix)
    info = tensor_info(choice.header, choice.key)
    check_2d(info, choice.file.name)
    if info.dtype not in STORAGE_DTYPES:
        raise BlackholesError(
            f"tensor {info.name!r} in {choice.file.name} has dtype {info.dtype}, which blackholes cannot read "
            f"(supported: {', '.join(STORAGE_DTYPES)})"
        )
    if store is not None:
        array = store.fetch(source, key, matrix, choice, info, progress)
    else:
        array = _fetch(choice.file, info, np.empty(info.nbytes, np.uint8), progress)
    return _matrix(source, choice, info, array, site.fetched.total)


@dataclass
class _Choice:
    """The tensor picked, the file holding it, and what the model folder said about it."""

    file: object  # an _HttpFile or _FsspecFile
    name: str | None  # the file's name in the model folder (None for a lone file)
    header: Header | None
    key: str
    note: str
    matrix: str | None
    tied: bool | None


def _matrix(source: str, choice: _Choice, info: TensorInfo, array: np.ndarray, fetched: int) -> Matrix:
    return Matrix(
        array=array.view(STORAGE_DTYPES[info.dtype]).reshape(info.shape),
        dtype=info.dtype,
        source=source,
        path=None,
        key=choice.key,
        matrix=choice.matrix,
        note=choice.note,
        tied=choice.tied,
        revision=choice.file.revision,
        bytes_read=fetched,
        url=choice.file.name,
    )


# -- choosing the tensor: the same rules as for a local file or folder -----------------------------


def _choose_in_file(file, key: str | None, matrix: str | None) -> _Choice:
    header = read_remote_header(file)
    if key is None:
        key, note = pick_in_file(header, matrix)
    else:
        note = "--key"
    return _Choice(file, None, header, key, note, matrix, None)


def _choose_in_folder(site, key: str | None, matrix: str | None) -> _Choice:
    """config.json, then the index (or the single file), then only the shard(s) needed."""
    names = site.names()  # None where the server cannot list (plain HTTP)
    config = site.json("config.json") if names is None or "config.json" in names else None
    index = site.json(INDEX) if names is None or INDEX in names else None
    headers = _Headers(site)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BlackholesError(f"no weight_map in {site.where}{INDEX}")
        keys = sorted(weight_map)

        def file_of(k: str) -> str:
            shard = weight_map.get(k)
            if not isinstance(shard, str) or not shard or shard.startswith("/") or ".." in shard.split("/"):
                raise BlackholesError(f"corrupt weight_map in {site.where}{INDEX}: {k!r} maps to {shard!r}")
            return shard
    else:
        single = _single_file(site, names, headers)
        keys = sorted(headers.get(single).tensors)
        file_of = lambda k: single  # noqa: E731
    config = config or {}
    if key is None:
        shape_of = lambda k: tensor_info(headers.get(file_of(k)), k).shape  # noqa: E731
        key, note = pick_in_model(keys, config, matrix, site.where, shape_of)
    elif index is not None and key not in weight_map:
        raise BlackholesError(f"tensor {key!r} not found in {site.where}{INDEX}; keys: {short_list(keys)}")
    else:
        note = "--key"
    name = file_of(key)
    return _Choice(site.file(name), name, headers.get(name), key, note, matrix or "output", is_tied(config))


def _single_file(site, names: list[str] | None, headers: "_Headers") -> str:
    """``model.safetensors``, or the folder's only ``.safetensors`` file, or a one-line refusal."""
    if names is None:  # cannot list: try the usual name
        try:
            headers.get(SINGLE)
        except _NotFound:
            raise BlackholesError(f"no {INDEX} or {SINGLE} at {site.where}") from None
        return SINGLE
    if SINGLE in names:
        return SINGLE
    others = sorted(n for n in names if n.endswith(".safetensors"))
    if len(others) == 1:
        return others[0]
    found = sorted(n for n in names if posixpath.splitext(n)[1] in (".bin", ".pt", ".pth", ".gguf", ".h5"))
    hint = f" (found {', '.join(found)}; only safetensors is read)" if found else ""
    many = f" (several .safetensors files and no index: {', '.join(others)})" if others else ""
    raise BlackholesError(f"no safetensors weights in {site.where}{many or hint}")


class _Headers:
    """Parsed headers of a folder's files, each fetched at most once."""

    def __init__(self, site):
        self.site, self.seen = site, {}

    def get(self, name: str) -> Header:
        if name not in self.seen:
            self.seen[name] = read_remote_header(self.site.file(name))
        return self.seen[name]


def read_remote_header(file) -> Header:
    """Parse a remote file's safetensors header: one ranged request of :data:`PROBE_BYTES`
    (which also checks the server honours ``Range``), and a second only for a longer header."""
    head = file.probe(PROBE_BYTES)
    n = header_length(head[:8], file.size, file.name)
    if 8 + n > len(head):
        head += file.read(len(head), 8 + n)
    return parse_header(bytes(head[8 : 8 + n]), file.size, file.name)


def _fetch(file, info: TensorInfo, out: np.ndarray, progress: bool) -> np.ndarray:
    """Stream the tensor's byte range into ``out`` (``info.nbytes`` uint8), chunk by chunk."""
    from tqdm.auto import tqdm

    with tqdm(total=info.nbytes, unit="B", unit_scale=True, unit_divisor=1024, desc=info.name,
              disable=not progress, file=sys.stderr, mininterval=0.25) as bar:
        file.read_into(info.start, memoryview(out).cast("B"), bar.update)
    return out


# -- where the source points: a folder (site), and maybe one file in it ----------------------------


class _Fetched:
    """Body bytes received over the network, all files of one load together."""

    def __init__(self):
        self.total = 0


def _locate(source: str):
    """``(site, file)``: the folder the source lives in, and the file it names (None for a folder)."""
    protocol = source.split("://", 1)[0].lower()
    if protocol in ("http", "https"):
        return _http_site(source)
    if protocol == "hf":
        return _hub_site(source)
    return _fsspec_site(source)


def _http_site(source: str):
    http = _Http()
    if urlsplit(source).path.endswith("/"):
        return _HttpSite(source, http), None
    site = _HttpSite(urljoin(source, "."), http)
    return site, _HttpFile(source, http, site.fetched)


@dataclass
class _HttpSite:
    """A folder on a plain HTTP server: its files are found by name (a server cannot be listed)."""

    where: str  # ends in "/"
    http: "_Http"
    revision: str | None = None

    def __post_init__(self):
        self.fetched, self.files = _Fetched(), {}

    def names(self) -> list[str] | None:
        return None

    def file(self, name: str) -> "_HttpFile":
        if name not in self.files:  # one object per file: what it learns (size, ETag) is checked later
            self.files[name] = _HttpFile(urljoin(self.where, name), self.http, self.fetched)
        return self.files[name]

    def json(self, name: str) -> dict | None:
        return _parse_json(self.file(name).read_whole(JSON_LIMIT), self.where + name)


def _parse_json(raw: bytes | None, where: str) -> dict | None:
    return None if raw is None else json_object(raw, where)


# -- HTTP: checked byte ranges, read straight into the array ---------------------------------------


class _NotFound(BlackholesError):
    """HTTP 404, or a missing file: a folder's optional files may be absent."""


class _Transient(Exception):
    """A failure worth another try: a dropped connection, a short body, a 5xx."""


class _Http:
    """How requests go out: the standard library's ``urllib`` (proxies from the environment,
    redirects followed, credentials sent only to their own host), plus headers every request
    carries (a Hub token). A response body is read straight into the tensor's array
    (``readinto``), so a fetch costs what a plain download of the same bytes costs."""

    def __init__(self, headers: dict | None = None, auth_hint: str = ""):
        import urllib.request

        self.headers = dict(headers or {})
        self.auth_hint = auth_hint
        self.opener = urllib.request.build_opener(_redirects())

    def open(self, url: str, headers: dict, method: str = "GET"):
        """The response to one request, whatever its status (an error status is a response too)."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, headers={**self.headers, **headers}, method=method)
        try:
            return self.opener.open(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:  # 4xx/5xx: still a response, with status and headers
            return e


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


class _HttpFile:
    """One file on an HTTP server, read only through byte ranges whose answers are checked:
    206, the exact ``Content-Range`` asked for, the same file size (and ETag) every time."""

    def __init__(self, url: str, http: _Http, fetched: _Fetched, *, name: str | None = None,
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
        del out[got:]
        return out

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
                raise _Transient(f"only {done:,} of {want:,} bytes arrived")

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
        span = _content_range(r.headers.get("Content-Range", ""))
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
            if not n:
                raise _Transient(f"the connection closed after {got[0]:,} of {len(out):,} bytes")
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
            return _Transient(f"HTTP {status} {reason or ''}".strip())
        if status == 404:
            return _NotFound(f"not found (HTTP 404): {self.name}")
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
        except _NotFound:
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
            except _Transient as e:
                reason = str(e)
            except urllib.error.URLError as e:  # no connection (error statuses are answers, see _Http.open)
                if self.size is None:  # never reached it: an address that is wrong, not a hiccup
                    raise BlackholesError(f"cannot reach {self.name}: {_why(e.reason)}") from None
                reason = _why(e.reason)
            except (http.client.HTTPException, OSError) as e:  # dropped, reset, timed out mid-way
                reason = _why(e) if str(e) else type(e).__name__
            except ValueError as e:
                raise BlackholesError(f"not a URL that can be read: {self.name} ({_why(e)})") from None
            if failure < TRIES:
                time.sleep(BACKOFF_S * 2 ** (failure - 1))
        raise BlackholesError(f"{what} of {self.name} failed {TRIES} times (last: {reason}); "
                              f"gave up, nothing is reported from partial data")


def _content_range(text: str) -> tuple[int, int, int] | None:
    """``(first, last, total)`` of ``bytes first-last/total``; None for anything else."""
    m = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+)", text.strip())
    if m is None or int(m[2]) < int(m[1]) or int(m[3]) <= int(m[2]):
        return None
    return int(m[1]), int(m[2]), int(m[3])


def _why(e: BaseException) -> str:
    """A one-line reason from a network exception."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# -- hf://: a Hub repository at one commit, through huggingface_hub --------------------------------

HUB_AUTH_HINT = " (a private or gated model needs HF_TOKEN, or `hf auth login`)"


def _hub_site(source: str):
    """Resolve ``hf://[type/]org/name[@revision][/path]`` to the commit it names, with HfFileSystem."""
    from huggingface_hub import HfApi, HfFileSystem, constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise BlackholesError(f"HF_HUB_OFFLINE is set, and {source} needs the network "
                              f"(unset it, or scan the cached copy by its id: org/name)")
    # Read now, not at import (as huggingface_hub.constants does): the usual variables as set today.
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    fs = HfFileSystem(endpoint=endpoint, skip_instance_cache=True)
    resolved = _hub_call(source, endpoint, lambda: fs.resolve_path(source))
    if not hasattr(resolved, "repo_id"):
        raise BlackholesError(f"not a model repository (hf:// buckets are not read): {source}")
    api = HfApi(endpoint=endpoint)
    info = _hub_call(source, endpoint, lambda: api.repo_info(resolved.repo_id, revision=resolved.revision,
                                                             repo_type=resolved.repo_type))
    sha = getattr(info, "sha", None) or resolved.revision
    path = resolved.path_in_repo.strip("/")
    is_file = path.endswith(".safetensors")
    folder = posixpath.dirname(path) if is_file else path
    site = _HubSite(fs, endpoint, resolved.repo_type, resolved.repo_id, sha, folder)
    return site, site.file(posixpath.basename(path)) if is_file else None


class _HubSite:
    """A folder of a Hub repository at one commit: listed by HfFileSystem, its files read from the
    ``resolve/<commit>/`` URLs with the Hub's headers (the token, when there is one)."""

    def __init__(self, fs, endpoint: str, repo_type: str, repo_id: str, sha: str, folder: str):
        from huggingface_hub.utils import build_hf_headers

        self.fs, self.endpoint, self.repo_type, self.repo_id = fs, endpoint, repo_type, repo_id
        self.revision, self.folder = sha, folder
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
        self.root = f"{prefix}{repo_id}@{sha}"  # HfFileSystem's name of the repository at that commit
        self.where = f"hf://{self.root}/" + (f"{folder}/" if folder else "")
        self.http = _Http(build_hf_headers(), HUB_AUTH_HINT)
        self.fetched, self.files = _Fetched(), {}

    def names(self) -> list[str]:
        listing = _hub_call(self.where, self.endpoint,
                            lambda: self.fs.ls(f"{self.root}/{self.folder}".rstrip("/"), detail=False))
        return [posixpath.basename(p.rstrip("/")) for p in listing]

    def file(self, name: str) -> _HttpFile:
        if name not in self.files:
            from huggingface_hub import hf_hub_url

            rel = posixpath.join(self.folder, name) if self.folder else name
            url = hf_hub_url(self.repo_id, rel, repo_type=self.repo_type, revision=self.revision,
                             endpoint=self.endpoint)
            self.files[name] = _HttpFile(url, self.http, self.fetched, name=self.where + name, revision=self.revision)
        return self.files[name]

    def json(self, name: str) -> dict | None:
        return _parse_json(self.file(name).read_whole(JSON_LIMIT), self.where + name)


def _hub_call(source: str, endpoint: str, call):
    """``call()`` (a huggingface_hub request), its failures worded as one line."""
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return call()
    except (FileNotFoundError, HfHubHTTPError) as e:
        cause = e if isinstance(e, HfHubHTTPError) else e.__cause__
        if isinstance(cause, GatedRepoError):
            raise BlackholesError(f"gated model: accept its terms on the Hub, then set HF_TOKEN (or run "
                                  f"`hf auth login`): {source}") from None
        if isinstance(cause, RepositoryNotFoundError):
            raise BlackholesError(f"no such model on the Hub at {endpoint} (or it is private or gated: set "
                                  f"HF_TOKEN): {source}") from None
        if isinstance(cause, RevisionNotFoundError):
            raise BlackholesError(f"no such revision of the model on the Hub: {source}") from None
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status in (401, 403):
            raise BlackholesError(f"access denied by the Hub (HTTP {status}){HUB_AUTH_HINT}: {source}") from None
        if status is not None:
            raise BlackholesError(f"the Hub answered HTTP {status}: {source}") from None
        raise BlackholesError(f"not found on the Hub: {source}") from None
    except OfflineModeIsEnabled:
        raise BlackholesError(f"HF_HUB_OFFLINE is set, and {source} needs the network") from None
    except (ValueError, NotImplementedError) as e:  # HFValidationError is a ValueError
        raise BlackholesError(f"not a Hub path (hf://org/name[@revision][/file.safetensors]): {source} "
                              f"({_why(e)})") from None
    except Exception as e:
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3"):
            raise BlackholesError(f"cannot reach the Hugging Face Hub at {endpoint}: {_why(e)}") from None
        raise


# -- any other fsspec URL (s3://, gs://, memory://, ...) -------------------------------------------


def _fsspec_site(source: str):
    import fsspec

    protocol = source.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except ImportError as e:
        raise BlackholesError(f"reading {protocol}:// needs a package that is not installed ({_why(e)})") from None
    except (ValueError, TypeError) as e:
        raise BlackholesError(f"cannot open {source}: {_why(e)}") from None
    site = _FsspecSite(fs, path.rstrip("/"), source.rstrip("/") + "/")
    if not path.endswith(".safetensors") and _fs_call(source, lambda: fs.isdir(path)):
        return site, None
    parent, name = posixpath.split(path.rstrip("/"))
    site = _FsspecSite(fs, parent, source.rstrip("/").rsplit("/", 1)[0] + "/")
    return site, site.file(name)


class _FsspecSite:
    """A folder of any fsspec filesystem."""

    def __init__(self, fs, path: str, where: str):
        self.fs, self.path, self.where = fs, path, where
        self.revision = None
        self.fetched, self.files = _Fetched(), {}

    def names(self) -> list[str]:
        listing = _fs_call(self.where, lambda: self.fs.ls(self.path, detail=False))
        return [posixpath.basename(p.rstrip("/")) for p in listing]

    def file(self, name: str) -> "_FsspecFile":
        if name not in self.files:
            self.files[name] = _FsspecFile(self.fs, f"{self.path}/{name}", self.where + name, self.fetched)
        return self.files[name]

    def json(self, name: str) -> dict | None:
        return _parse_json(self.file(name).read_whole(JSON_LIMIT), self.where + name)


class _FsspecFile:
    """One file of an fsspec filesystem, read with ``cat_file(path, start, end)`` chunk by chunk;
    every answer must hold exactly the bytes asked for."""

    def __init__(self, fs, path: str, name: str, fetched: _Fetched):
        self.fs, self.path, self.name, self.fetched = fs, path, name, fetched
        self.revision = None
        self.size: int | None = None

    def _size(self) -> int:
        if self.size is None:
            size = _fs_call(self.name, lambda: self.fs.size(self.path))
            if not isinstance(size, int):
                raise BlackholesError(f"the filesystem does not tell the size of {self.name}")
            self.size = size
        return self.size

    def probe(self, n: int) -> bytearray:
        return self.read(0, min(n, self._size()))

    def read(self, start: int, stop: int) -> bytearray:
        out = bytearray(stop - start)
        self.read_into(start, memoryview(out))
        return out

    def read_into(self, start: int, out: memoryview, update=None) -> None:
        for offset in range(0, len(out), CHUNK_BYTES):
            piece = out[offset : offset + CHUNK_BYTES]
            a, b = start + offset, start + offset + len(piece)
            data = _fs_call(self.name, lambda: self.fs.cat_file(self.path, start=a, end=b))
            if len(data) != len(piece):
                raise BlackholesError(f"asked for bytes {a:,}-{b - 1:,}, got {len(data):,} bytes: {self.name}")
            piece[:] = data
            self.fetched.total += len(data)
            if update is not None:
                update(len(data))

    def read_whole(self, limit: int) -> bytes | None:
        try:
            size = self._size()
        except _NotFound:
            return None
        if size > limit:
            raise BlackholesError(f"{self.name} is larger than {limit:,} bytes; not a model's JSON file")
        return bytes(self.read(0, size))

    def validator(self) -> str | None:
        try:
            return "ukey " + str(self.fs.ukey(self.path))
        except Exception:  # a filesystem without file details: nothing to tell versions apart
            return None


def _fs_call(name: str, call):
    """``call()`` on an fsspec filesystem, retried on connection trouble, failures in one line."""
    for failure in range(1, TRIES + 1):
        try:
            return call()
        except FileNotFoundError:
            raise _NotFound(f"not found: {name}") from None
        except PermissionError as e:
            raise BlackholesError(f"access denied: {name} ({_why(e)})") from None
        except (ConnectionError, TimeoutError, OSError) as e:
            reason = _why(e)
        if failure < TRIES:
            time.sleep(BACKOFF_S * 2 ** (failure - 1))
    raise BlackholesError(f"reading {name} failed {TRIES} times (last: {reason}); gave up")


# -- --cache DIR -----------------------------------------------------------------------------------


class _Cache:
    """Fetched tensor bytes kept as ``DIR/<digest>.bin`` (digest of url, version, tensor, byte range),
    found again without any fetch through ``DIR/<digest>.json`` (digest of source, key, matrix)."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BlackholesError(f"cannot create the cache folder {self.folder}: {e.strerror or e}") from None

    def _entry_path(self, source: str, key, matrix) -> Path:
        return self.folder / (_digest(["entry", source, key, matrix]) + ".json")

    def lookup(self, source: str, key, matrix, site, lone) -> Matrix | None:
        """The cached tensor as a read-only memory map, if the remote file is unchanged; else None."""
        entry = _read_entry(self._entry_path(source, key, matrix))
        if entry is None:
            return None
        data = self.folder / entry["data"]
        info = TensorInfo(entry["tensor"], entry["dtype"], tuple(entry["shape"]), entry["start"], entry["stop"])
        if not data.is_file() or data.stat().st_size != info.nbytes:
            return None
        if (lone is None) != (entry["file"] is not None):
            return None
        file = lone if lone is not None else site.file(entry["file"])
        if file.validator() != entry["validator"]:  # changed, or cannot tell (then never reused)
            return None
        choice = _Choice(file, entry["file"], None, entry["tensor"], entry["note"], entry["matrix"], entry["tied"])
        array = np.memmap(data, dtype=np.uint8, mode="r", shape=(info.nbytes,))
        return _matrix(source, choice, info, array, site.fetched.total)

    def fetch(self, source: str, key, matrix, choice: _Choice, info: TensorInfo, progress: bool) -> np.ndarray:
        """Fetch the tensor into its cache file (atomically) unless it is there; memory-map it."""
        from blackholes.io.atomic import atomic_path, write_json

        validator = choice.file.validator()
        if validator is None:  # cannot tell this version from the next: fetch, keep nothing
            return _fetch(choice.file, info, np.empty(info.nbytes, np.uint8), progress)
        data = self.folder / (_digest(["data", choice.file.name, validator, info.name, info.start, info.end]) + ".bin")
        if not (data.is_file() and data.stat().st_size == info.nbytes):
            with atomic_path(data) as tmp:
                out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(info.nbytes,))
                _fetch(choice.file, info, out, progress)
                out.flush()
                del out
        entry = {"format": 1, "source": source, "key": key, "matrix_asked": matrix, "file": choice.name,
                 "url": choice.file.name, "validator": validator, "tensor": info.name, "dtype": info.dtype,
                 "shape": list(info.shape), "start": info.start, "stop": info.end, "note": choice.note,
                 "matrix": choice.matrix, "tied": choice.tied, "data": data.name}
        write_json(self._entry_path(source, key, matrix), entry)
        return np.memmap(data, dtype=np.uint8, mode="r", shape=(info.nbytes,))


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def _read_entry(path: Path) -> dict | None:
    """A cache entry, or None when it is missing or not one this code wrote."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        ok = (entry["format"] == 1 and isinstance(entry["data"], str) and "/" not in entry["data"]
              and entry["dtype"] in STORAGE_DTYPES and all(isinstance(s, int) for s in entry["shape"])
              and len(entry["shape"]) == 2 and isinstance(entry["start"], int) and isinstance(entry["stop"], int)
              and (entry["file"] is None or isinstance(entry["file"], str))
              and entry["stop"] - entry["start"] == math.prod(entry["shape"]) * STORAGE_DTYPES[entry["dtype"]].itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if ok else None
