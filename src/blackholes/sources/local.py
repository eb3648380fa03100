"""Local safetensors: a lone file, or a Hugging Face model folder (single file or sharded).

Only headers are read to choose the tensor; the chosen one is memory-mapped, and
of a sharded model only the shard that holds it is opened.
"""

from __future__ import annotations

from pathlib import Path

from blackholes.errors import BlackholesError
from blackholes.io.safetensors import Header, TensorInfo, map_tensor, read_header, tensor_info
from blackholes.io.untrusted import parse_json
from blackholes.sources.matrix import Matrix
from blackholes.sources.names import pick_in_file, pick_in_model, short_list

JSON_LIMIT = 64 << 20  # a model's config.json or index larger than this is refused


def check_2d(info: TensorInfo, path: Path) -> None:
    if len(info.shape) != 2:
        raise BlackholesError(
            f"tensor {info.name!r} in {path} has shape {list(info.shape)}; expected a 2-D "
            f"[vocab, dim] matrix (pick another with --key)"
        )
    if info.shape[0] == 0 or info.shape[1] == 0:
        raise BlackholesError(f"tensor {info.name!r} in {path} is empty (shape {list(info.shape)})")


def load_file(path: Path, key: str | None, matrix: str | None, step: int | None = None) -> Matrix:
    header = read_header(path)
    if is_recording(header) and key in (None, "embeddings"):
        return _recording_step(header, step)
    if key is None:
        key, note = pick_in_file(header, matrix)
    else:
        note = "--key"
    return _matrix(header, key, folder=path.parent, matrix=matrix, note=note)


def _matrix(header: Header, key: str, *, folder: Path, matrix: str | None, note: str, inputs=()) -> Matrix:
    """Memory-map ``key`` as a 2-D Matrix, with the tokenizer.json found in ``folder``; ``inputs``:
    the other files read to find it (config, index, shards)."""
    info = tensor_info(header, key)
    check_2d(info, header.path)
    tok = folder / "tokenizer.json"
    return Matrix(
        array=map_tensor(header.path, info),
        dtype=info.dtype,
        source=str(header.path),  # load_matrix replaces it with the source as given
        path=header.path,
        key=key,
        tokenizer=tok if tok.is_file() else None,
        matrix=matrix,
        note=note,
        inputs=tuple(inputs),
    )


RECORDING_KEYS = ("embeddings", "grads", "logits")  # what `blackholes train` records at every step


def is_recording(header: Header) -> bool:
    """Whether a safetensors file is a training recording (per-step [steps, V, D] embeddings)."""
    return all(k in header.tensors for k in RECORDING_KEYS) and len(header.tensors["embeddings"].shape) == 3


def _recording_step(header: Header, step: int | None) -> Matrix:
    """The embedding matrix of one recorded step (default: the last) of a training recording."""
    from blackholes.io.recording import Recording

    rec = Recording(header.path)
    steps = [int(s) for s in rec.steps]
    if not steps:
        raise BlackholesError(f"the recording {header.path} holds no steps")
    if step is None:
        index, why = len(steps) - 1, "the last recorded"
    elif step in steps:
        index, why = steps.index(step), "--step"
    else:
        raise BlackholesError(f"step {step} is not recorded in {header.path} (recorded: {steps[0]}-{steps[-1]}, "
                              f"{len(steps)} records)")
    return Matrix(
        array=rec.tensor("embeddings")[index], dtype=rec.dtype, source=str(header.path), path=header.path,
        key=f"embeddings[{index}]", note=f"training recording: the embeddings at step {steps[index]} ({why})",
    )


def read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > JSON_LIMIT:
            raise BlackholesError(f"cannot read {path}: larger than {JSON_LIMIT:,} bytes, not a model's JSON file")
        raw = path.read_bytes()
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    return json_object(raw, path)


def json_object(raw: bytes, where) -> dict:
    """A model's JSON file (config, index) from its bytes, or one line saying why not.

    >>> json_object(b'{"tie_word_embeddings": true}', "config.json")
    {'tie_word_embeddings': True}
    """
    doc = parse_json(raw, what=f"cannot read {where}", max_bytes=JSON_LIMIT)
    if not isinstance(doc, dict):
        raise BlackholesError(f"unexpected contents (not a JSON object): {where}")
    return doc


def load_folder(folder: Path, key: str | None, matrix: str | None) -> Matrix:
    """A Hugging Face model folder: single-file or sharded safetensors weights."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BlackholesError(f"no weight_map in {index}")
        keys = sorted(weight_map)
    elif single.is_file():
        weight_map = None
        keys = sorted(read_header(single).tensors)
    else:
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(others) == 1:
            single, weight_map = folder / others[0], None
            keys = sorted(read_header(single).tensors)
        else:
            found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf", ".h5"))
            hint = f" (found {', '.join(found)}; only safetensors is read)" if found else ""
            many = f" (several .safetensors files and no index: {', '.join(others)})" if others else ""
            raise BlackholesError(f"no safetensors weights in {folder}{many or hint}")

    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    read = [p for p in (index, single, config_path) if p.is_file()]
    if weight_map is not None:  # every shard the index names: any may be read to pick the matrix
        read += [folder / _shard_name(weight_map, k, folder) for k in keys]
    if key is not None:
        note = "--key"
    else:
        key, note = pick_in_model(keys, config, matrix, folder, _shape_reader(folder, weight_map, single))
    if weight_map is not None:
        if key not in weight_map:
            raise BlackholesError(f"tensor {key!r} not found in {index}; keys: {short_list(keys)}")
        path = folder / _shard_name(weight_map, key, folder)  # the one shard holding it
    else:
        path = single
    return _matrix(read_header(path), key, folder=folder, matrix=matrix or "output", note=note,
                   inputs=dict.fromkeys(read))


def _shard_name(weight_map: dict, key: str, folder: Path) -> str:
    shard = weight_map[key]
    if not isinstance(shard, str) or not shard or shard.startswith("/") or ".." in shard.split("/"):
        index = folder / "model.safetensors.index.json"
        raise BlackholesError(f"corrupt weight_map in {index}: {key!r} maps to {shard!r}, not a file of the model")
    return shard


def _shape_reader(folder: Path, weight_map: dict | None, single: Path):
    """``shape_of(key)``, reading only the header of the file holding ``key``."""

    def shape_of(key: str) -> tuple[int, ...]:
        path = single if weight_map is None else folder / _shard_name(weight_map, key, folder)
        return tensor_info(read_header(path), key).shape

    return shape_of
