"""Checksums of what the stages write, and the readers' checks of them.

- activation shards: a CRC-32 per shard in ``activations/manifest.json`` (big and read every
  epoch: CRC-32 runs at memory speed), checked on every load;
- dictionaries: the SHA-256 of ``sae.safetensors`` in its ``cfg.json`` (written after it);
- checkpoints (``state.pt``): the SHA-256 of the contents under the key ``sha256`` inside the
  checkpoint itself, so that checksum and contents are replaced in one rename;
- ``features.sqlite``: a seal ``features.sqlite.crc`` (CRC-32 and size of the file) written when a
  writer releases the run lock with the WAL folded back into the file; a writer removes it when it
  takes the lock, so a seal is never stale. Readers check it when present (once per file state per
  process) and check the file's header and length against the page count always.

Every failed check is a ``UserError`` naming the file and the command that rewrites it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from monosemantic.errors import UserError

CHUNK = 1 << 22
SEAL_SUFFIX = ".crc"
_verified: set[tuple[int, int, int]] = set()  # (inode, size, mtime_ns) of databases checked here


def crc32_bytes(data: bytes | memoryview) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def crc32_file(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checked(path: Path, crc32: str | None, rerun: str) -> bytes:
    """The bytes of ``path``, checked against ``crc32`` (None: written before checksums, unchecked).

    Raises:
        UserError: missing, unreadable or not matching; the message ends with ``rerun``.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path} is missing or unreadable ({e.strerror}): {rerun}") from e
    if crc32 is not None and crc32_bytes(data) != crc32:
        raise UserError(f"{path} is corrupt (checksum mismatch, {len(data)} bytes): {rerun}")
    return data


# --- checkpoints --------------------------------------------------------------------------------


def state_digest(obj: Any, h: Any = None) -> str:
    """SHA-256 over a checkpoint's contents (tensors' dtype, shape and bytes, other values' repr),
    walked in order, so that it survives ``torch.save``/``torch.load`` and catches any change."""
    import torch

    top = h is None
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k, v in obj.items():
            h.update(repr(k).encode())
            state_digest(v, h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            state_digest(v, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else ""


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` with its ``state_digest`` under the key ``sha256`` (a plain
    torch file: ``torch.load`` reads it)."""
    import torch

    torch.save({**state, "sha256": state_digest(state)}, path)


def load_checkpoint(path: Path, map_location: Any, rerun: str) -> dict[str, Any]:
    """Read a file of ``write_checkpoint`` (one without ``sha256``, older, unchecked); returns the
    state without its checksum.

    Raises:
        UserError: bytes torch cannot read (truncated, foreign), or contents that do not match.
    """
    import torch

    try:
        state = dict(torch.load(path, map_location=map_location, weights_only=True))
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise UserError(f"checkpoint {path} is corrupt ({type(e).__name__}): {rerun}") from e
    want = state.pop("sha256", None)
    if want is not None and want != state_digest(state):
        raise UserError(f"checkpoint {path} is corrupt (checksum mismatch): {rerun}")
    return state


# --- the feature database -----------------------------------------------------------------------


def seal_path(db: Path) -> Path:
    """Where the checksum of the database ``db`` is kept."""
    return db.with_name(db.name + SEAL_SUFFIX)


def _db_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def unseal_db(run: Path, db_name: str = "features.sqlite") -> tuple[Any, str | None]:
    """A writer is about to change the database: remove its seal (it would go stale if the writer
    were killed). Returns what ``seal_db`` needs to put it back unchanged when nothing changed."""
    path = run / db_name
    seal = seal_path(path)
    try:
        text: str | None = seal.read_text()
    except OSError:
        text = None
    seal.unlink(missing_ok=True)
    return _db_state(path), text


def _nonempty(path: Path) -> bool:
    """Whether ``path`` exists and holds bytes, read in one ``stat`` (an SQLite WAL comes and goes
    as other processes open and close the database: testing, then reading, races with them)."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def seal_db(
    run: Path, before: tuple[Any, str | None] = (None, None), db_name: str = "features.sqlite"
) -> None:
    """Fold the WAL into the database and record its CRC-32 (or put back the seal ``unseal_db``
    removed, when the file did not change); skipped while a reader holds the WAL open (the database
    then stays unsealed: readers check its structure only)."""
    import sqlite3

    from monosemantic.fsio import write_text

    path = run / db_name
    wal = path.with_name(path.name + "-wal")
    if not path.is_file():
        return
    unchanged = before[0] is not None and _db_state(path) == before[0]
    if unchanged and before[1] is not None and not _nonempty(wal):
        write_text(seal_path(path), before[1])
        return
    try:
        con = sqlite3.connect(path, timeout=1.0)
        try:
            busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return  # a corrupt database stays unsealed; its readers report it
    if busy or _nonempty(wal):
        return
    seal = {"crc32": crc32_file(path), "size": path.stat().st_size}
    write_text(seal_path(path), json.dumps(seal) + "\n")


def check_db(path: Path, rerun: str) -> None:
    """Check ``path`` (an SQLite file) against its header and its seal, if any.

    Raises:
        UserError: not an SQLite file, shorter than its pages, or not matching its seal.
    """
    st = path.stat()
    if st.st_size == 0:
        return  # created, then its writer was stopped before the first page: SQLite starts it afresh
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise UserError(f"{path} is not an SQLite database (corrupt or truncated): {rerun}")
    wal = path.with_name(path.name + "-wal")
    if _nonempty(wal):
        return  # committed pages live in the WAL too: the file alone says nothing
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    n_pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and st.st_size < page * n_pages:
        raise UserError(
            f"{path} is truncated ({st.st_size} bytes, its header says {page * n_pages}): {rerun}"
        )
    seal = seal_path(path)
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _verified or not seal.is_file():
        return
    try:
        want = json.loads(seal.read_text())
    except (OSError, json.JSONDecodeError):
        return  # a seal being replaced: the next open checks
    if want.get("size") != st.st_size or want.get("crc32") != crc32_file(path):
        raise UserError(f"{path} is corrupt (checksum mismatch against {seal.name}): {rerun}")
    _verified.add(key)
