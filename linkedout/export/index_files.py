"""The directory of a retrieval index (``linkedout.export.index``): its files, its manifest, appends.

A directory holds, for its current generation ``g``:

- ``table-g.npy``: the rows at save time (N, d) float32, memory-mapped on load;
- ``ann-g.faiss``: the faiss index of those rows (ANN kinds only);
- ``added-g.f32``: rows added since, appended raw (d float32 each);
- ``removed-g.i64``: removed rows (tombstones), appended raw (int64 each);
- ``payload-g.bin``: with a payload, the records of the rows from the manifest's ``payload.from`` on,
  appended raw with their rows (the manifest names their structured dtype);
- ``manifest.json``: the format, the generation, the files, the kind, the settings and how many rows
  of ``added-g.f32`` and entries of ``removed-g.i64`` are valid; replaced atomically (a temporary
  file, then ``os.replace``);
- ``.lock``: the lock writers hold (``writer_lock``).

A reader reads only what the manifest names, so a writer killed mid-append leaves the previous state
(bytes past the valid count are ignored, and cut off by the next append). A new generation's files
are written whole before the manifest names them; the old generation's are deleted after.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.utils import atomic_write_text

__all__ = ["INDEX_FORMAT", "MANIFEST", "RetrievalIndexError", "append_at", "append_rows", "change_rows", "check_vectors",
           "checked_payload", "dtype_from_json", "dtype_to_json", "generation_files", "grown", "read_items",
           "read_manifest", "remove_rows", "remove_stale", "write_manifest", "write_table", "writer_lock"]

INDEX_FORMAT = 1
MANIFEST = "manifest.json"
_REQUIRED = ("generation", "kind", "dim", "base_rows", "added_rows", "removed_count", "settings")


class RetrievalIndexError(ValueError):
    """Bad settings or input, a missing or malformed index file, or faiss missing for an ANN kind."""


def generation_files(gen: int) -> dict[str, str]:
    """The file names of generation ``gen``: ``table``, ``ann``, ``added``, ``removed``."""
    return {"table": f"table-{gen}.npy", "ann": f"ann-{gen}.faiss", "added": f"added-{gen}.f32",
            "removed": f"removed-{gen}.i64", "payload": f"payload-{gen}.bin"}


def read_manifest(d: Path) -> dict[str, Any]:
    """The manifest of directory ``d``; ``RetrievalIndexError`` if missing, malformed or of another format."""
    path = d / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON
        raise RetrievalIndexError(f"{path} cannot be read (not a retrieval index directory?): {e}") from e
    found = doc.get("format") if isinstance(doc, dict) else doc
    if found != INDEX_FORMAT:
        raise RetrievalIndexError(f"{path}: unknown index format {found!r}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise RetrievalIndexError(f"{path} lacks {missing}")
    return doc


def write_manifest(d: Path, doc: dict[str, Any]) -> None:
    """Replace ``d``'s manifest by ``doc`` (plus the format and the generation's file names), atomically."""
    doc = {"format": INDEX_FORMAT, **doc, "files": generation_files(doc["generation"])}
    atomic_write_text(d / MANIFEST, json.dumps(doc, indent=1))


def append_at(path: Path, x: np.ndarray, offset: int) -> None:
    """Write ``x``'s bytes at byte ``offset`` of ``path`` (cutting off what a killed writer left past it),
    then fsync: O(len(x)) bytes, whatever the file's size."""
    with open(path, "r+b") as f:
        f.truncate(offset)
        f.seek(offset)
        f.write(x.tobytes())
        f.flush()
        os.fsync(f.fileno())


def read_items(path: Path, dtype: Any, offset: int, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` from item ``offset`` of a raw file; an error if the file holds fewer."""
    arr: np.ndarray = np.fromfile(path, dtype=dtype, count=count, offset=offset * np.dtype(dtype).itemsize)
    if arr.size != count:
        raise RetrievalIndexError(f"{path} holds {arr.size} of the {count} items its manifest names")
    return arr


def write_table(path: Path, parts: Sequence[np.ndarray], block: int = 1 << 18) -> None:
    """Write the rows of ``parts`` as one (N, d) float32 .npy, streamed ``block`` rows at a time, atomically."""
    n, d = sum(p.shape[0] for p in parts), parts[0].shape[1]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for p in parts:
            for lo in range(0, p.shape[0], block):
                f.write(np.ascontiguousarray(p[lo:lo + block], dtype="<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale(d: Path, gen: int) -> None:
    """Delete the files of generations other than ``gen`` and the temporary files a killed writer left
    (call it holding ``writer_lock``)."""
    keep = set(generation_files(gen).values())
    for f in d.iterdir():
        old = f.name not in keep and f.name.split("-")[0] in ("table", "ann", "added", "removed", "payload")
        if old or (f.name.startswith(".") and f.name.endswith(".tmp")):
            f.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_lock(d: Path) -> Iterator[None]:
    """Held by writers of ``d`` (add, remove, save): one at a time, across processes (``flock``)."""
    with open(d / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def change_rows(directory: str | os.PathLike[str], embeddings: np.ndarray | None = None,
                payload: np.ndarray | None = None, removed: np.ndarray | Sequence[int] | None = None, *,
                precheck: Callable[[dict[str, Any]], np.ndarray | None] | None = None) -> np.ndarray:
    """Append rows (and their records) and tombstone rows of the index saved in ``directory``, as one
    change, without loading the index; the new rows.

    Under the writer lock: ``precheck(manifest)`` (when given) may refuse the change by raising, and
    returns the rows to remove (else ``removed``); then the removed file, the added file, the payload
    file, and the manifest, whose replacement commits all of it at once. Bytes written: the changed
    rows and records and the manifest, whatever the index's size. A writer killed before the manifest
    leaves the previous state (its bytes past the valid counts are ignored, and cut off by the next).
    """
    d = Path(directory)
    with writer_lock(d):
        doc = read_manifest(d)
        if precheck is not None:
            removed = precheck(doc)
        dim, base, added = int(doc["dim"]), int(doc["base_rows"]), int(doc["added_rows"])
        files = generation_files(int(doc["generation"]))
        count = int(doc["removed_count"])
        r = np.asarray(removed if removed is not None else [], dtype=np.int64).reshape(-1)
        if r.size:
            if len(np.unique(r)) != r.size:
                raise RetrievalIndexError("the rows to remove hold duplicates")
            gone = read_items(d / files["removed"], np.int64, 0, count)
            bad = r[(r < 1) | (r > base + added) | np.isin(r, gone)]
            if bad.size:
                raise RetrievalIndexError(f"cannot remove rows that are not live rows 1..{base + added}: "
                                          f"{bad[:10].tolist()}")
        x = np.zeros((0, dim), dtype=np.float32) if embeddings is None else check_vectors(embeddings, dim, "embeddings")
        pdoc = doc.get("payload")
        rec = checked_payload(dtype_from_json(pdoc["dtype"]) if pdoc else None, payload, x.shape[0]) \
            if x.shape[0] else None
        if r.size:
            append_at(d / files["removed"], r, count * 8)
        if x.shape[0]:
            append_at(d / files["added"], x, added * dim * 4)
        if rec is not None and pdoc:
            records = base + added + 1 - int(pdoc["from"])
            append_at(d / files["payload"], rec, records * rec.dtype.itemsize)
        write_manifest(d, {**doc, "added_rows": added + x.shape[0], "removed_count": count + r.size})
    first = base + added + 1
    return np.arange(first, first + x.shape[0], dtype=np.int64)


def append_rows(directory: str | os.PathLike[str], embeddings: np.ndarray, payload: np.ndarray | None = None) -> np.ndarray:
    """Append rows (and their records) to the index saved in ``directory`` (``change_rows``); their rows."""
    return change_rows(directory, embeddings, payload)


def remove_rows(directory: str | os.PathLike[str], rows: np.ndarray | Sequence[int]) -> None:
    """Tombstone live ``rows`` of the index saved in ``directory`` (``change_rows``): O(rows) bytes."""
    change_rows(directory, removed=rows)


def check_vectors(x: Any, dim: int | None, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 (M >= 1, d) array of finite values, d == ``dim`` when given."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or (dim is not None and arr.shape[1] != dim):
        want = f"(M >= 1, {dim})" if dim is not None else "(N >= 1, d >= 1)"
        raise RetrievalIndexError(f"{name} must be {want}, got shape {arr.shape}")
    if not all(np.isfinite(arr[lo:lo + (1 << 18)]).all() for lo in range(0, arr.shape[0], 1 << 18)):
        raise RetrievalIndexError(f"{name} holds non-finite values")
    return arr


def checked_payload(dtype: np.dtype | None, payload: np.ndarray | None, m: int) -> np.ndarray | None:
    """``payload`` as M contiguous records of ``dtype`` (None without a payload); an error naming the mismatch."""
    if dtype is None:
        if payload is not None:
            raise RetrievalIndexError("this index carries no payload (built without payload_dtype)")
        return None
    if payload is None:
        raise RetrievalIndexError(f"this index needs a payload record per added row ({dtype})")
    rec = np.ascontiguousarray(payload)
    if rec.dtype != dtype or rec.shape != (m,):
        raise RetrievalIndexError(f"payload must be ({m},) of {dtype}, got {rec.shape} of {rec.dtype}")
    return rec


def grown(buf: np.ndarray, used: int, x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` written after the first ``used`` items of ``buf`` (a new buffer of double size when full)."""
    need = used + x.shape[0]
    if need > buf.shape[0]:
        grown = np.empty((max(need, 2 * buf.shape[0], 16), *x.shape[1:]), dtype=x.dtype)
        grown[:used] = buf[:used]
        buf = grown
    buf[used:need] = x
    return buf, need


def dtype_to_json(dtype: np.dtype) -> list[list[Any]]:
    """A structured dtype as JSON lists (``dtype_from_json`` reads it back)."""
    fields: Any = dtype.fields or {}
    return [[name, fields[name][0].base.str, list(fields[name][0].shape)] for name in dtype.names or ()]


def dtype_from_json(doc: list[list[Any]]) -> np.dtype:
    return np.dtype([(str(name), str(base), tuple(int(s) for s in shape)) for name, base, shape in doc])
