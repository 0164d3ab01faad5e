"""Reading a corpus: text streamed from text files, JSONL, CSV, parquet and saved HF datasets.

A corpus is a file, a directory of files, or a Hugging Face dataset saved with
``save_to_disk``. Each record of a JSONL, CSV, parquet or dataset source is one document
(its ``--data.text-column``); each text file is one document. Readers hold one block of a
text file or one record batch at a time, so a corpus of any size streams through in bounded
memory. Errors name the file and the line or row. Nothing is downloaded: a hub name or a URL
is an error that says so.

This module imports neither torch nor numpy: tokenizer worker processes import it cheaply.
"""

from __future__ import annotations

import csv
import hashlib
import json
import stat
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from steplab.config import DataConfig
from steplab.errors import DataError

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".rst",
    ".text",
    ".py",
    ".c",
    ".h",
    ".js",
    ".ts",
    ".rs",
    ".go",
    ".java",
    ".tex",
}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
BLOCK = 1 << 18  # bytes of a text file read at a time (pieces are one to two blocks)
ROWS = 1024  # records per batch read from parquet and saved datasets
HF_EXTRA = "pip install 'steplab[hf]'"


class Piece(NamedTuple):
    """A stretch of one document; `end` marks its last piece, `pos` the source bytes read so far."""

    text: str
    end: bool
    pos: int


def bundled_corpus() -> Path:
    """Tiny Shakespeare, shipped inside the package (public domain)."""
    return Path(str(resources.files("steplab") / "data" / "tinyshakespeare.txt"))


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def source_root(cfg: DataConfig) -> Path:
    """The path --data names; a hub name or URL is refused (steplab never downloads)."""
    if not cfg.path:
        return bundled_corpus()
    path = Path(cfg.path)
    never = (
        "steplab never downloads from a hub or the web — fetch the dataset yourself "
        "(e.g. datasets.load_dataset(...).save_to_disk(DIR)) and pass the local path"
    )
    if "://" in cfg.path:
        raise DataError(f"--data: {cfg.path} is a URL; {never}")
    if not path.exists() and cfg.path.count("/") == 1 and not cfg.path.startswith((".", "/", "~")):
        raise DataError(f"--data: {cfg.path} does not exist here; if it names a hub dataset: {never}")
    if not path.exists():
        raise DataError(
            f"--data: {path} does not exist (pass a text, .jsonl, .csv or .parquet file, a directory, "
            "or a dataset saved with save_to_disk)"
        )
    return path


def source_files(cfg: DataConfig) -> list[Path]:
    """Every file the corpus is read from, in reading order (the cache key hashes them)."""
    root = source_root(cfg)
    if is_saved_dataset(root):
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not root.is_dir():
        return [_regular_file(root)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES | TABLE_SUFFIXES]
    if not files:
        raise DataError(
            f"--data: directory {root} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}) "
            f"or tables ({', '.join(sorted(TABLE_SUFFIXES))})"
        )
    kinds = {p.suffix.lower() in TABLE_SUFFIXES for p in files}
    if len(kinds) == 2:
        warnings.warn(
            f"--data: {root} mixes text files and tables; both are read (each text file is one "
            "document). Point --data at a subdirectory to read only one kind.",
            stacklevel=1,  # one place: shown once, however often the files are listed
        )
    return files


def _regular_file(path: Path) -> Path:
    """`path` if it is a regular file: a FIFO or a device never ends, and could not be hashed or re-read."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return path
    kind = {
        stat.S_IFIFO: "a FIFO (named pipe)",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
    }.get(stat.S_IFMT(mode), "not a regular file")
    raise DataError(
        f"--data: {path} is {kind}, not a regular file; steplab reads a corpus twice (tokenizer, then "
        "tokens) and hashes it for the cache: save the text to a file and pass that"
    )


def source_hash(cfg: DataConfig) -> str:
    """sha256 over the files' names, sizes and contents: the cache key of the corpus."""
    h = hashlib.sha256()
    for p in source_files(cfg):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def source_bytes(cfg: DataConfig) -> int:
    return sum(p.stat().st_size for p in source_files(cfg))


# --- streaming ---------------------------------------------------------------------------------


def read_pieces(cfg: DataConfig) -> Iterator[Piece]:
    """The corpus as pieces of documents, in order; `pos` counts source bytes across all files."""
    root = source_root(cfg)
    if is_saved_dataset(root):
        yield from _read_saved_dataset(root, cfg)
        return
    done = 0
    for path in source_files(cfg):
        reader = READERS.get(path.suffix.lower(), _read_text)
        for piece in reader(path, cfg):
            yield piece._replace(pos=done + piece.pos)
        done += path.stat().st_size


def read_documents(cfg: DataConfig) -> Iterator[str]:
    """Whole documents as strings (a text file is read into memory at once: prefer `read_pieces`)."""
    parts: list[str] = []
    for piece in read_pieces(cfg):
        parts.append(piece.text)
        if piece.end:
            yield "".join(parts)
            parts = []


def _read_text(path: Path, cfg: DataConfig) -> Iterator[Piece]:
    """A text file as pieces of about `BLOCK` characters, cut where no tokenizer merges across.

    Bytes are decoded up to the last newline of each block read (a newline is never inside a
    multi-byte character); pieces are then cut at a newline with no whitespace on either side:
    the GPT-2 pre-tokenizer of byte-level BPE splits there anyway, so encoding the pieces one by
    one gives the same tokens as encoding the file whole. A file with no such newline is one piece.
    """
    offset, pending, text, lo = 0, b"", "", 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(BLOCK)
            data = pending + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut > 0:
                try:
                    text += data[:cut].decode("utf-8", errors=cfg.errors)
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}: not UTF-8 at byte {offset + e.start} "
                        "(re-encode the file, or pass --data.errors replace)"
                    ) from None
                offset, pending = offset + cut, data[cut:]
            else:
                pending = data
            if not block:
                yield Piece(text, True, offset)
                return
            if len(text) >= BLOCK:
                split = safe_cut(text, lo)
                if split > 0:
                    yield Piece(text[:split], False, offset)
                    text = text[split:]
                lo = max(0, len(text) - 1)  # the newlines before this have been looked at


def safe_cut(text: str, lo: int = 0) -> int:
    """Index just after the last newline at or after `lo` with a non-space character on both sides (-1: none)."""
    i = text.rfind("\n", lo, len(text) - 1)
    while i > 0 and i >= lo:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", lo, i)
    return -1


def _read_jsonl(path: Path, cfg: DataConfig) -> Iterator[Piece]:
    pos = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            pos += len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8", errors=cfg.errors)
            except UnicodeDecodeError:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (re-encode the file, or pass --data.errors replace)"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: broken JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(record, dict) or cfg.text_column not in record:
                raise DataError(
                    f"{path}:{lineno}: no {cfg.text_column!r} field (choose the field with --data.text-column)"
                )
            yield Piece(_text_value(record[cfg.text_column], f"{path}:{lineno}", cfg), True, pos)


def _read_csv(path: Path, cfg: DataConfig) -> Iterator[Piece]:
    """CSV with a header row; a quoted field may span lines. Line numbers are the record's last line."""
    pos = 0

    def lines() -> Iterator[str]:
        nonlocal pos
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                pos += len(raw)
                try:
                    yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8", errors=cfg.errors)
                except UnicodeDecodeError:
                    raise DataError(
                        f"{path}:{lineno}: not UTF-8 (re-encode the file, or pass --data.errors replace)"
                    ) from None

    # The csv module's field limit is process-wide; raise it so long documents are not refused.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise DataError(f"{path}:1: unreadable CSV header ({e})") from None
    if cfg.text_column not in header:
        raise DataError(
            f"{path}:1: no {cfg.text_column!r} column (columns: {', '.join(header)}; "
            "choose one with --data.text-column)"
        )
    col = header.index(cfg.text_column)
    try:
        for row in reader:
            if not row:
                continue
            if len(row) <= col:
                raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, no {cfg.text_column!r} value")
            yield Piece(row[col], True, pos)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: broken CSV ({e})") from None


def _read_parquet(path: Path, cfg: DataConfig) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: {HF_EXTRA}") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if cfg.text_column not in names:
        raise DataError(
            f"{path}: no {cfg.text_column!r} column (columns: {', '.join(names)}; "
            "choose one with --data.text-column)"
        )
    total, size, row = max(1, pf.metadata.num_rows), path.stat().st_size, 0
    for batch in pf.iter_batches(batch_size=ROWS, columns=[cfg.text_column]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield Piece(_text_value(value, f"{path} row {row}", cfg), True, size * row // total)


def _read_saved_dataset(root: Path, cfg: DataConfig) -> Iterator[Piece]:
    """A dataset saved with `save_to_disk`, memory-mapped by `datasets`; a DatasetDict's 'train' split."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"--data: {root} is a saved Hugging Face dataset; reading it needs {HF_EXTRA}"
        ) from None
    ds: Any = datasets.load_from_disk(str(root))
    where = str(root)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(
                f"--data: {root} holds splits {', '.join(ds)} but no 'train'; "
                f"pass the split's directory, e.g. {root / next(iter(ds))}"
            )
        ds, where = ds["train"], f"{root} (train split)"
    if cfg.text_column not in ds.column_names:
        raise DataError(
            f"--data: {where} has no {cfg.text_column!r} column (columns: {', '.join(ds.column_names)}; "
            "choose one with --data.text-column)"
        )
    size, total, row = sum(p.stat().st_size for p in source_files(cfg)), max(1, len(ds)), 0
    ds = ds.select_columns([cfg.text_column])
    for batch in ds.iter(batch_size=ROWS):
        for value in batch[cfg.text_column]:
            row += 1
            yield Piece(_text_value(value, f"{where} row {row}", cfg), True, size * row // total)


def _text_value(value: Any, where: str, cfg: DataConfig) -> str:
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise DataError(f"{where}: field {cfg.text_column!r} is not a string (got {got})")
    return value


READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
