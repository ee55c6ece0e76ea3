"""Where each owner's search collections live on disk, and the move of pre-owner files.

A collection is identified by (owner, name), so two owners may both have `docs`. Under
`search.path` each owner has one folder named by a hash of the owner (`o-<sha256 hex>`): an
owner is any principal's subject (a JWT `sub`, an API key name, `local`), which may hold
`/`, `..`, letters that differ only in case, or more bytes than a file name allows; the hash
is safe and fixed-length on every filesystem. The folder's `owner` file holds the owner in
clear, so listings (and whoever moves collections elsewhere) can say whose it is:

    <search.path>/o-<sha256(owner)>/owner        the owner, UTF-8
    <search.path>/o-<sha256(owner)>/<name>.db    one SQLite file per collection

Before owners, collections were `<search.path>/<name>.db`, shared by every caller. They are
moved, once, to `LEGACY_OWNER` (`local`, the owner of auth mode `none`, the only owner that
could have made them deliberately): in mode `none` nothing changes for the user, and in the
other modes they stop being readable by every tenant; an admin reaches them with
`owner=local` and can re-index them for whoever they belong to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skillq.errors import InvalidParams
from skillq.json_values import shown

logger = logging.getLogger(__name__)

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_COLLECTION = re.compile(COLLECTION_PATTERN)
#: Owner of the collections made before collections had owners.
LEGACY_OWNER = "local"
#: As the job store's `owner` column.
MAX_OWNER_LENGTH = 200
_OWNER_FILE = "owner"
_LOCK_FILE = ".layout.lock"


def check_collection(name: Any) -> str:
    if not isinstance(name, str) or not _COLLECTION.match(name):
        raise InvalidParams(
            f"invalid collection name {shown(name)}",
            [{"path": "collection", "message": f"must match {COLLECTION_PATTERN}"}],
        )
    return name


def check_owner(owner: Any) -> str:
    # No NUL: PostgreSQL text, where collections may move, cannot hold it.
    if not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER_LENGTH or "\x00" in owner:
        raise InvalidParams(
            "invalid owner",
            [{"path": "owner", "message": f"1-{MAX_OWNER_LENGTH} characters, no NUL"}],
        )
    return owner


class CollectionFiles:
    """The folder layout of one `search.path`; every call names the owner."""

    def __init__(self, root: Path, *, legacy_owner: str = LEGACY_OWNER) -> None:
        self.root = Path(root)
        self.legacy_owner = check_owner(legacy_owner)
        self._migrated = False

    def folder(self, owner: str) -> Path:
        digest = hashlib.sha256(check_owner(owner).encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / f"o-{digest}"

    def path(self, name: str, *, owner: str) -> Path:
        self.migrate()
        return self.folder(owner) / f"{check_collection(name)}.db"

    def prepare(self, owner: str) -> None:
        """Makes the owner's folder and its `owner` file before a collection is created."""
        folder = self.folder(owner)
        folder.mkdir(parents=True, exist_ok=True)
        owner_file = folder / _OWNER_FILE
        if not owner_file.is_file():
            temporary = folder / f".{_OWNER_FILE}.{uuid.uuid4().hex}"  # one per writer
            temporary.write_text(owner, encoding="utf-8", errors="surrogatepass")
            os.replace(temporary, owner_file)

    def owners(self) -> list[str]:
        """Every owner with a collection folder."""
        self.migrate()
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.glob("o-*"):
            try:
                owner = (folder / _OWNER_FILE).read_text(encoding="utf-8", errors="surrogatepass")
                if folder == self.folder(owner):  # not a file edited or copied by hand
                    found.append(owner)
            except (OSError, UnicodeDecodeError, InvalidParams):
                continue
        return sorted(found)

    def names(self, owner: str) -> list[str]:
        self.migrate()
        folder = self.folder(owner)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.db") if _COLLECTION.match(p.stem))

    def migrate(self) -> None:
        """Moves pre-owner collections (`<root>/<name>.db`) to the legacy owner, once per
        process; a lock file keeps two processes starting together from racing."""
        if self._migrated:
            return
        legacy = (
            [p for p in self.root.glob("*.db") if _COLLECTION.match(p.stem)]
            if self.root.is_dir()
            else []
        )
        if legacy:
            with self._lock():
                for path in legacy:
                    self._move(path)
        self._migrated = True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / _LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _move(self, path: Path) -> None:
        target = self.folder(self.legacy_owner) / path.name
        if not path.is_file():
            return  # another process moved it a moment ago
        try:
            # mode=rw: never create the file if it went meanwhile.
            db = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None)
            try:
                # Fold the write-ahead log into the file: the one file is the whole collection.
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
        except sqlite3.Error as error:
            # Not a database, or unreadable: left for the operator, not a failure of every
            # search.
            logger.warning("Not moving collection file %s: %s", path, error)
            return
        if target.exists():
            logger.warning(
                "Not moving collection file %s: %r already has a collection %r at %s.",
                path,
                self.legacy_owner,
                path.stem,
                target,
            )
            return
        self.prepare(self.legacy_owner)
        os.rename(path, target)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        logger.info("Moved collection %r, made before owners, to %r.", path.stem, self.legacy_owner)
