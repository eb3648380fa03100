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
from blackholes.sources.http_ranges import BACKOFF_S, TRIES, Fetched, Http, HttpFile, NotFound, check_url, why
from blackholes.sources.local import check_2d, json_object
from blackholes.sources.matrix import Matrix
from blackholes.sources.names import is_tied, pick_in_file, pick_in_model, short_list

CHUNK_BYTES = 16 << 20  # bytes of one cat_file call on other fsspec filesystems (held in memory at once)
PROBE_BYTES = 64 << 10  # the first request of a file: the header length and (usually) all of the header
JSON_LIMIT = 64 << 20  # config.json / the index larger than this is refused
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
    try:
        return _load(source, site, lone, key, matrix, cache, progress)
    finally:
        if getattr(site, "http", None) is not None:
            site.http.finish()


def _load(source: str, site, lone, key, matrix, cache, progress) -> Matrix:
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
        array, kept = store.fetch(source, key, matrix, choice, info, progress)
    else:
        array, kept = _fetch(choice.file, info, np.empty(info.nbytes, np.uint8), progress), ()
    return _matrix(source, choice, info, array, site.fetched.total, (*_local_files(site), *kept))


@dataclass
class _Choice:
    """The tensor picked, the file holding it, and what the model folder said about it."""

    file: HttpFile | _FsspecFile  # how the bytes are read: our HTTP client, or fsspec
    name: str | None  # the file's name in the model folder (None for a lone file)
    header: Header | None
    key: str
    note: str
    matrix: str | None
    tied: bool | None


def _matrix(source: str, choice: _Choice, info: TensorInfo, array: np.ndarray, fetched: int,
            inputs: tuple = ()) -> Matrix:
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
        inputs=tuple(inputs),  # local files read: a file:// source's files, the cache's entry and data
    )


def _local_files(site) -> list[Path]:
    """The local files a ``file://`` source read (an fsspec site on the local disk); none elsewhere."""
    fs = getattr(site, "fs", None)
    if fs is None or "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return []
    return [Path(f.path) for f in site.files.values() if Path(f.path).is_file()]


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
            if not _inside(shard):
                raise BlackholesError(f"corrupt weight_map in {site.where}{INDEX}: {k!r} maps to {shard!r}, "
                                      f"not a file of the model's own folder")
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


def _inside(name) -> bool:
    """Whether an index's file name stays in the model's own folder: relative, no ``..``, no scheme
    or host (``https://elsewhere/x``, ``//host/x``), no query, no backslash or control character.

    >>> [_inside(n) for n in ("model-00001.safetensors", "sub/x.safetensors", "../x", "https://e.org/x", "/x")]
    [True, True, False, False, False]
    """
    if not isinstance(name, str) or not name or name.startswith("/") or any(c in name for c in "\\?#%"):
        return False
    if any(ord(c) < 32 or c.isspace() for c in name) or urlsplit(name).scheme or ":" in name.split("/")[0]:
        return False
    return ".." not in name.split("/")


def _single_file(site, names: list[str] | None, headers: "_Headers") -> str:
    """``model.safetensors``, or the folder's only ``.safetensors`` file, or a one-line refusal."""
    if names is None:  # cannot list: try the usual name
        try:
            headers.get(SINGLE)
        except NotFound:
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


def _locate(source: str):
    """``(site, file)``: the folder the source lives in, and the file it names (None for a folder)."""
    protocol = source.split("://", 1)[0].lower()
    if protocol in ("http", "https"):
        return _http_site(source)
    if protocol == "hf":
        return _hub_site(source)
    return _fsspec_site(source)


def _http_site(source: str):
    check_url(source)
    http = Http()
    if urlsplit(source).path.endswith("/"):
        return _HttpSite(source, http), None
    site = _HttpSite(urljoin(source, "."), http)
    return site, HttpFile(source, http, site.fetched)


@dataclass
class _HttpSite:
    """A folder on a plain HTTP server: its files are found by name (a server cannot be listed)."""

    where: str  # ends in "/"
    http: "Http"
    revision: str | None = None

    def __post_init__(self):
        self.fetched, self.files = Fetched(), {}

    def names(self) -> list[str] | None:
        return None

    def file(self, name: str) -> "HttpFile":
        if name not in self.files:  # one object per file: what it learns (size, ETag) is checked later
            self.files[name] = HttpFile(urljoin(self.where, name), self.http, self.fetched)
        return self.files[name]

    def json(self, name: str) -> dict | None:
        return _parse_json(self.file(name).read_whole(JSON_LIMIT), self.where + name)


def _parse_json(raw: bytes | None, where: str) -> dict | None:
    return None if raw is None else json_object(raw, where)


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
    if not isinstance(sha, str) or not (re.fullmatch(r"[0-9a-f]{40}", sha) or sha == resolved.revision):
        raise BlackholesError(f"the Hub at {endpoint} answered for {source} with commit {str(sha)[:80]!r}, "
                              f"not a commit id; is HF_ENDPOINT a Hub?")
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
        self.http = Http(build_hf_headers(), HUB_AUTH_HINT)
        self.fetched, self.files = Fetched(), {}

    def names(self) -> list[str]:
        listing = _hub_call(self.where, self.endpoint,
                            lambda: self.fs.ls(f"{self.root}/{self.folder}".rstrip("/"), detail=False))
        if not isinstance(listing, list) or not all(isinstance(p, str) for p in listing):
            raise BlackholesError(f"the Hub at {self.endpoint} answered a listing of {self.where} that is not a "
                                  f"list of files; is HF_ENDPOINT a Hub?")
        return [posixpath.basename(p.rstrip("/")) for p in listing]

    def file(self, name: str) -> HttpFile:
        if name not in self.files:
            from huggingface_hub import hf_hub_url

            rel = posixpath.join(self.folder, name) if self.folder else name
            url = hf_hub_url(self.repo_id, rel, repo_type=self.repo_type, revision=self.revision,
                             endpoint=self.endpoint)
            self.files[name] = HttpFile(url, self.http, self.fetched, name=self.where + name, revision=self.revision)
        return self.files[name]

    def json(self, name: str) -> dict | None:
        return _parse_json(self.file(name).read_whole(JSON_LIMIT), self.where + name)


def _hub_call(source: str, endpoint: str, call):
    """``call()`` (a huggingface_hub request), its failures worded as one line; given up when it has
    no answer within the read deadline (``BLACKHOLES_HTTP_READ_S``: a Hub that accepts and hangs)."""
    import threading

    from blackholes.sources.http_ranges import READ_S, deadlines

    wait = deadlines().read
    done: list = []
    worker = threading.Thread(target=lambda: done.append(_hub_answer(source, endpoint, call)), daemon=True)
    worker.start()
    worker.join(wait)
    if not done:
        raise BlackholesError(f"the Hugging Face Hub at {endpoint} gave no answer for {wait:g} s ({READ_S[0]}): "
                              f"{source}")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _hub_answer(source: str, endpoint: str, call) -> tuple[bool, object]:
    """(True, ``call()``) or (False, the one-line error it comes to): run in :func:`_hub_call`'s thread."""
    try:
        return True, _hub_worded(source, endpoint, call)
    except BlackholesError as e:
        return False, e


def _hub_worded(source: str, endpoint: str, call):
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
    except json.JSONDecodeError as e:
        raise _unexpected(source, endpoint, e) from None
    except (ValueError, NotImplementedError) as e:  # HFValidationError is a ValueError
        raise BlackholesError(f"not a Hub path (hf://org/name[@revision][/file.safetensors]): {source} "
                              f"({why(e)})") from None
    except Exception as e:
        if isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3"):
            raise BlackholesError(f"cannot reach the Hugging Face Hub at {endpoint}: {why(e)}") from None
        raise _unexpected(source, endpoint, e) from None  # an answer of another shape than the Hub's


def _unexpected(source: str, endpoint: str, e: BaseException) -> BlackholesError:
    return BlackholesError(f"the Hub at {endpoint} gave an answer of the wrong shape ({type(e).__name__}: "
                           f"{why(e)[:120]}); is HF_ENDPOINT a Hub?: {source}")


hub_call = _hub_call  # public name: sources.series lists a model's refs through it, worded the same


# -- any other fsspec URL (s3://, gs://, memory://, ...) -------------------------------------------


def _fsspec_site(source: str):
    import fsspec

    protocol = source.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except ImportError as e:
        raise BlackholesError(f"reading {protocol}:// needs a package that is not installed ({why(e)})") from None
    except (ValueError, TypeError) as e:
        raise BlackholesError(f"cannot open {source}: {why(e)}") from None
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
        self.fetched, self.files = Fetched(), {}

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

    def __init__(self, fs, path: str, name: str, fetched: Fetched):
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
        except NotFound:
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
            raise NotFound(f"not found: {name}") from None
        except PermissionError as e:
            raise BlackholesError(f"access denied: {name} ({why(e)})") from None
        except (ConnectionError, TimeoutError, OSError) as e:
            reason = why(e)
        if failure < TRIES:
            time.sleep(BACKOFF_S * 2 ** (failure - 1))
    raise BlackholesError(f"reading {name} failed {TRIES} times (last: {reason}); gave up")


# -- --cache DIR -----------------------------------------------------------------------------------


class _Cache:
    """Fetched tensor bytes kept as ``DIR/<digest>.bin`` (digest of url, version, tensor, byte range),
    found again without any fetch through ``DIR/<digest>.json`` (digest of source, key, matrix).

    An entry records the data's size and sha256 at fetch time; every reuse checks both (and that the
    remote file is unchanged), and anything that differs is fetched again. An entry is untrusted
    input like any other: read within limits, its file name confined to the model's folder."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BlackholesError(f"cannot create the cache folder {self.folder}: {e.strerror or e}") from None

    def _entry_path(self, source: str, key, matrix) -> Path:
        return self.folder / (_digest(["entry", source, key, matrix]) + ".json")

    def lookup(self, source: str, key, matrix, site, lone) -> Matrix | None:
        """The cached tensor as a read-only memory map, if it and the remote file are unchanged; else None."""
        from blackholes.sources.ollama import sha256_file

        path = self._entry_path(source, key, matrix)
        entry = _read_entry(path)
        if entry is None or (lone is None) != (entry["file"] is not None):
            return None
        data = self.folder / entry["data"]
        info = TensorInfo(entry["tensor"], entry["dtype"], tuple(entry["shape"]), entry["start"], entry["stop"])
        if not data.is_file() or data.stat().st_size != info.nbytes or sha256_file(data) != entry["sha256"]:
            return None  # cut short, or changed since it was fetched: fetched again
        file = lone if lone is not None else site.file(entry["file"])
        if file.validator() != entry["validator"]:  # changed, or cannot tell (then never reused)
            return None
        choice = _Choice(file, entry["file"], None, entry["tensor"], entry["note"], entry["matrix"], entry["tied"])
        array = np.memmap(data, dtype=np.uint8, mode="r", shape=(info.nbytes,))
        return _matrix(source, choice, info, array, site.fetched.total, (path, data))

    def fetch(self, source: str, key, matrix, choice: _Choice, info: TensorInfo,
              progress: bool) -> tuple[np.ndarray, tuple[Path, ...]]:
        """Fetch the tensor into its cache file (atomically) and record it; memory-map it.
        Returns the array and the cache files it now lies in."""
        from blackholes.io.atomic import atomic_path, write_json

        validator = choice.file.validator()
        if validator is None:  # cannot tell this version from the next: fetch, keep nothing
            return _fetch(choice.file, info, np.empty(info.nbytes, np.uint8), progress), ()
        data = self.folder / (_digest(["data", choice.file.name, validator, info.name, info.start, info.end]) + ".bin")
        with atomic_path(data) as tmp:  # never reused unchecked: the bytes this entry records are these
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(info.nbytes,))
            _fetch(choice.file, info, out, progress)
            out.flush()
            digest = hashlib.sha256(memoryview(out)).hexdigest()
            del out
        entry = {"format": 2, "source": source, "key": key, "matrix_asked": matrix, "file": choice.name,
                 "url": choice.file.name, "validator": validator, "tensor": info.name, "dtype": info.dtype,
                 "shape": list(info.shape), "start": info.start, "stop": info.end, "note": choice.note,
                 "matrix": choice.matrix, "tied": choice.tied, "data": data.name, "sha256": digest}
        path = self._entry_path(source, key, matrix)
        write_json(path, entry)
        return np.memmap(data, dtype=np.uint8, mode="r", shape=(info.nbytes,)), (path, data)


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


ENTRY_LIMIT = 1 << 20  # a cache entry is a few hundred bytes


def _read_entry(path: Path) -> dict | None:
    """A cache entry, or None when it is missing or not one this code wrote (then it is fetched again)."""
    from blackholes.io.untrusted import parse_json

    try:
        if not path.is_file() or path.stat().st_size > ENTRY_LIMIT:
            return None
        entry = parse_json(path.read_bytes(), what=str(path))
        shape = entry["shape"]
        ok = (entry["format"] == 2 and isinstance(entry["data"], str)
              and re.fullmatch(r"[0-9a-f]{40}\.bin", entry["data"]) is not None
              and isinstance(entry["sha256"], str) and entry["dtype"] in STORAGE_DTYPES
              and isinstance(shape, list) and len(shape) == 2
              and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
              and isinstance(entry["start"], int) and isinstance(entry["stop"], int) and entry["start"] >= 0
              and (entry["file"] is None or _inside(entry["file"]))
              and all(isinstance(entry[k], str) for k in ("tensor", "note", "validator"))
              and entry["matrix"] in (None, "input", "output") and entry["tied"] in (None, True, False)
              and entry["stop"] - entry["start"] == math.prod(shape) * STORAGE_DTYPES[entry["dtype"]].itemsize)
    except (OSError, KeyError, TypeError, BlackholesError):
        return None
    return entry if ok else None
