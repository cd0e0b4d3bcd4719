"""Stage fingerprints: what a stage's outputs were made from, stored beside them.

Every stage of the main job (dataset, features, split, each trained run, each evaluation, the
report) is reused only when the inputs it was made from are the ones asked for now. A stage's
inputs — configs, seeds, the digests of the data it reads and of its upstream stages' outputs —
are a small JSON object; its :class:`Fingerprint` (stage name + inputs, digest = sha256 of the
canonical JSON) is written beside the outputs (``fingerprint.json`` in an output directory, or
``<name>.fingerprint.json`` beside an output file). On a re-run the stage compares the stored
fingerprint with the new one: equal -> reuse; different -> redo (cheap, derived stages) or refuse
with :class:`StageMismatch`, whose message lists what differs and how to proceed.

Data digests are cheap by design (a MicroLens-100K re-run must not re-read 100 k videos):

- tables (pairs, titles, likes/views) are hashed whole (tens of MB at most);
- a video is identified by :func:`video_source`: size and mtime, plus a sha256 of its size, first
  and last 256 KiB — the stat fields decide quickly that nothing changed, the sampled hash decides
  whether a file whose stat changed (copied, touched, replaced) holds other content.

The main job's stage functions (:mod:`linkedout.job`) and the extraction's resume logic use it; it
sits at the bottom of the library (beside :mod:`linkedout.utils`) because the feature shards and the
trainer record fingerprints too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkedout.utils import atomic_write_text, file_sha256

__all__ = [
    "FINGERPRINT_FILE",
    "Fingerprint",
    "StageMismatch",
    "canonical_digest",
    "diff_inputs",
    "file_sha256",
    "read_fingerprint",
    "same_video",
    "tables_digest",
    "video_source",
    "write_fingerprint",
]

FINGERPRINT_FILE = "fingerprint.json"
FORMAT = "linkedout-fingerprint"
VERSION = 1
SAMPLE_BYTES = 256 << 10  # bytes hashed at each end of a video
_CHUNK = 1 << 22


def canonical_digest(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON (sorted keys, no spaces); tuples hash as lists."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"fingerprint inputs must be JSON data, got {type(o).__name__}")


class StageMismatch(ValueError):
    """A stage's outputs were made from other inputs than the ones asked for now.

    The message names the outputs, every differing input (old -> new) and how to proceed.
    """

    def __init__(self, where: str, stage: str, differences: list[str], hint: str) -> None:
        self.where = where
        self.stage = stage
        self.differences = differences
        self.hint = hint
        listed = "; ".join(differences[:8]) + (f"; ... ({len(differences)} in all)" if len(differences) > 8 else "")
        super().__init__(f"{where} holds {stage} made from other inputs ({listed}). {hint}")


@dataclass(frozen=True)
class Fingerprint:
    """The inputs a stage's outputs were made from. ``inputs`` is JSON data (nested dicts allowed)."""

    stage: str
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return canonical_digest({"stage": self.stage, "inputs": self.inputs})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "stage": self.stage, "digest": self.digest,
                "inputs": self.inputs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fingerprint:
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not a fingerprint of format {FORMAT!r} version {VERSION}")
        return cls(stage=str(d["stage"]), inputs=dict(d.get("inputs") or {}))

    def diff(self, new: Fingerprint) -> list[str]:
        """``key: old -> new`` for every input that differs (nested keys dotted)."""
        out = [] if self.stage == new.stage else [f"stage: {self.stage!r} -> {new.stage!r}"]
        return out + diff_inputs(self.inputs, new.inputs)

    def check(self, stored: Fingerprint | None, where: str, hint: str) -> bool:
        """True when ``stored`` equals this fingerprint, False when there is none; else :class:`StageMismatch`."""
        if stored is None:
            return False
        if stored.digest == self.digest:
            return True
        raise StageMismatch(where, self.stage, stored.diff(self), hint)


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=_json_default) if not isinstance(v, str) else repr(v)
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]  # a digest: its head is enough to tell two apart
    return text if len(text) <= 60 else text[:57] + "..."


def diff_inputs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Readable differences between two input mappings: ``a.b: 1 -> 2``, ``c: (absent) -> 3``."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        name = f"{prefix}{key}"
        if key not in old:
            out.append(f"{name}: (absent) -> {_short(new[key])}")
        elif key not in new:
            out.append(f"{name}: {_short(old[key])} -> (absent)")
        elif isinstance(old[key], Mapping) and isinstance(new[key], Mapping):
            out += diff_inputs(old[key], new[key], name + ".")
        elif canonical_digest(old[key]) != canonical_digest(new[key]):
            out.append(f"{name}: {_short(old[key])} -> {_short(new[key])}")
    return out


def fingerprint_path(output: str | os.PathLike[str]) -> Path:
    """Where the fingerprint of ``output`` lives: ``output/fingerprint.json`` for a directory
    (existing or named without a suffix), else ``<output>.fingerprint.json`` beside the file."""
    path = Path(output)
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / FINGERPRINT_FILE
    return path.with_name(path.name.rsplit(".", 1)[0] + ".fingerprint.json")


def read_fingerprint(output: str | os.PathLike[str]) -> Fingerprint | None:
    """The fingerprint stored for ``output`` (see :func:`fingerprint_path`), or None if none / unreadable."""
    path = fingerprint_path(output)
    try:
        return Fingerprint.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged fingerprint counts as none: the stage is redone or checked otherwise


def write_fingerprint(output: str | os.PathLike[str], fp: Fingerprint) -> Path:
    path = fingerprint_path(output)
    atomic_write_text(path, json.dumps(fp.to_dict(), indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


# ------------------------------------------------------------------------------------------ data


def tables_digest(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """``{file name: sha256}`` of the files that exist among ``paths`` (the dataset's tables)."""
    return {Path(p).name: file_sha256(p) for p in sorted(paths, key=str) if Path(p).is_file()}


def _sample_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
        h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def video_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a video file's content: ``{"size", "mtime_ns", "sample_sha256"}``.

    ``{"missing": True}`` for a file that does not exist (a later, present file is then a change).
    """
    path = Path(path)
    try:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": _sample_sha256(path, st.st_size)}
    except FileNotFoundError:
        return {"missing": True}
    except OSError as e:
        return {"missing": True, "error": f"{type(e).__name__}: {e}"}


def same_video(recorded: Mapping[str, Any] | None, path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` still holds the content ``recorded`` by :func:`video_source`.

    Unchanged size and mtime: the same (no read). Otherwise the sampled hash decides. A record of
    None (a store written before sources were recorded) counts as the same.
    """
    if recorded is None:
        return True
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return bool(recorded.get("missing"))
    if recorded.get("missing"):
        return False
    if st.st_size != recorded.get("size"):
        return False
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    try:
        return _sample_sha256(path, st.st_size) == recorded.get("sample_sha256")
    except OSError:
        return False


# ------------------------------------------------------------------------------- the stages' inputs

#: TrainConfig fields that do not change what a run learns (where it runs, how often it logs).
NON_SEMANTIC_TRAIN_FIELDS = ("device", "log_every", "num_workers", "eval_batch_size", "checkpoint_every")


def dataset_tables(root: str | os.PathLike[str], prefix: str) -> dict[str, Any]:
    """The data stage's digest of a MicroLens-layout dataset: its prefix and its tables' sha256."""
    root = Path(root)
    names = [f"{prefix}_pairs.csv", f"{prefix}_pairs.tsv", f"{prefix}_titles.csv", f"{prefix}_likes_and_views.txt"]
    return {"prefix": prefix, "tables": tables_digest(root / n for n in names)}


def files_digest(directory: str | os.PathLike[str], pattern: str = "*") -> str:
    """Cheap digest of a folder of media files (covers): names, sizes and mtimes, no content read."""
    directory = Path(directory)
    entries = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in directory.glob(pattern)
                     if p.is_file()) if directory.is_dir() else []
    return canonical_digest(entries)


def training_fingerprint(variant: str, model: Mapping[str, Any], train: Mapping[str, Any], split: str,
                         features: str | None, side_info: str | None = None) -> Fingerprint:
    """A trained run's inputs: variant, model and training configs (seed and epochs included), the
    split's and the feature store's content digests, and the side information (titles, covers)."""
    semantic = {k: v for k, v in train.items() if k not in NON_SEMANTIC_TRAIN_FIELDS}
    return Fingerprint("training", {"variant": variant, "model": dict(model), "train": semantic, "split": split,
                                    "features": features, "side_info": side_info})


def evaluation_fingerprint(training: str | None, checkpoint: str, split: str, features: str | None,
                           which: str, protocol: Mapping[str, Any]) -> Fingerprint:
    """An evaluation's inputs: the run's training fingerprint, the checkpoint file's sha256, the split,
    the features, which set and the protocol's settings."""
    return Fingerprint("evaluation", {"training": training, "checkpoint": checkpoint, "split": split,
                                      "features": features, "which": which, "protocol": dict(protocol)})
