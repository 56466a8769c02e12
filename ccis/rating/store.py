"""The study's SQLite file: what is rated, who rates, and every answer.

One file holds the study (groups, images, generators: the unblinding key), the raters
and admins (only the SHA-256 of their tokens) and the ratings. It runs in WAL mode with
``synchronous=FULL`` and autocommit: an answer is on disk before the server replies,
so a killed server loses nothing it acknowledged. A rating's key is (rater, image,
criterion): answering again replaces the value, so every answer is stored exactly once.
CHECK constraints repeat the web app's validation (1–5, known criteria) as a last line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ccis.rating.criteria import CRITERION_KEYS, SCALE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Tokens are secrets.token_urlsafe(32) (43 characters); anything else is refused unhashed.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
MEDIA_ID_RE = re.compile(r"^[0-9a-f]{16}$")

_CRITERIA_SQL = ", ".join(f"'{key}'" for key in CRITERION_KEYS)
SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE generators (
    name TEXT PRIMARY KEY, label TEXT NOT NULL, position INTEGER NOT NULL UNIQUE);
CREATE TABLE media (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, kind TEXT NOT NULL
        CHECK (kind IN ('image', 'mask', 'outline')),
    sha256 TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL);
CREATE TABLE groups (
    id INTEGER PRIMARY KEY, real_id TEXT NOT NULL, caption TEXT NOT NULL,
    mask TEXT NOT NULL REFERENCES media(id), outline TEXT NOT NULL REFERENCES media(id),
    repeat_of INTEGER REFERENCES groups(id));
CREATE TABLE images (
    id TEXT PRIMARY KEY REFERENCES media(id),
    group_id INTEGER NOT NULL REFERENCES groups(id),
    generator TEXT NOT NULL REFERENCES generators(name),
    source_id TEXT NOT NULL,
    UNIQUE (group_id, generator));
CREATE TABLE raters (
    id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE, token_sha256 TEXT NOT NULL UNIQUE,
    csrf TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE admins (
    id INTEGER PRIMARY KEY, label TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL);
CREATE TABLE ratings (
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    image_id TEXT NOT NULL REFERENCES images(id),
    criterion TEXT NOT NULL CHECK (criterion IN ({_CRITERIA_SQL})),
    value INTEGER NOT NULL CHECK (typeof(value) = 'integer' AND value BETWEEN
        {SCALE[0]} AND {SCALE[-1]}),
    first_saved TEXT NOT NULL, saved TEXT NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater_id, image_id, criterion)) WITHOUT ROWID;
"""


def now() -> str:
    """UTC time stamp, ISO 8601 to the millisecond."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def token_hash(token: str) -> str:
    """The stored form of a link token: its SHA-256 (hex)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def connect(path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL, full sync and foreign keys on (or one
    that only reads)."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        # query_only, not SQLite's mode=ro: a read-only open of a WAL file fails where its
        # -shm file cannot be created, and this must read a study a server is writing.
        conn.execute("PRAGMA query_only = ON")
    else:
        # WAL: readers never block the writer; FULL: the WAL is synced at every commit,
        # so an acknowledged answer survives a killed server (and a power cut).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def create_schema(conn: sqlite3.Connection, meta: dict[str, object]) -> None:
    """Create the tables in an empty database and record ``meta`` (JSON values)."""
    conn.executescript(SCHEMA)
    rows = {"schema_version": SCHEMA_VERSION, **meta}
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [(key, json.dumps(value)) for key, value in rows.items()],
    )


@dataclass(frozen=True)
class Rater:
    """A rater as the web app sees them (never their token)."""

    id: int
    label: str
    csrf: str


@dataclass(frozen=True)
class Image:
    """One rated image: its opaque id, group and (hidden from raters) generator."""

    id: str
    group_id: int
    generator: str
    width: int
    height: int


@dataclass(frozen=True)
class Group:
    """One group: a training mask, its caption and one image per generator."""

    id: int
    real_id: str
    caption: str
    mask: str
    outline: str
    repeat_of: int | None
    images: tuple[Image, ...]


class StudyError(ValueError):
    """A study file that is missing, not a study, or of another schema version."""


class Store:
    """Thread-safe access to one study file: one connection per thread.

    The study's structure (groups, images, media) never changes once created, so it is
    read once; raters, admins and ratings are read and written through SQLite each time.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StudyError(f"{self.path}: no such study file (create it with ccis rating-study)")
        self.folder = self.path.parent
        self._local = threading.local()
        # Writers queue here rather than in SQLite's busy handler, which sleeps in steps of
        # up to 100 ms while another connection holds the write lock.
        self._write = threading.Lock()
        conn = self.conn()
        try:
            self.meta = {
                r["key"]: json.loads(r["value"]) for r in conn.execute("SELECT * FROM meta")
            }
        except sqlite3.DatabaseError as err:
            raise StudyError(f"{self.path}: not a rating study ({err})") from err
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise StudyError(
                f"{self.path}: study schema version {self.meta.get('schema_version')!r}, "
                f"this ccis reads version {SCHEMA_VERSION}"
            )
        self.seed = int(self.meta["seed"])
        self.generators = [
            (r["name"], r["label"])
            for r in conn.execute("SELECT name, label FROM generators ORDER BY position")
        ]
        media = conn.execute("SELECT id, path, kind, width, height FROM media").fetchall()
        self.media = {r["id"]: (r["path"], r["kind"]) for r in media}
        self.sizes = {r["id"]: (r["width"], r["height"]) for r in media}
        images: dict[int, list[Image]] = {}
        self.images: dict[str, Image] = {}
        for r in conn.execute("SELECT id, group_id, generator FROM images ORDER BY id"):
            image = Image(r["id"], r["group_id"], r["generator"], *self.sizes[r["id"]])
            images.setdefault(r["group_id"], []).append(image)
            self.images[image.id] = image
        self.groups: dict[int, Group] = {
            r["id"]: Group(
                r["id"], r["real_id"], r["caption"], r["mask"], r["outline"], r["repeat_of"],
                tuple(images.get(r["id"], ())),
            )
            for r in conn.execute("SELECT * FROM groups ORDER BY id")
        }  # fmt: skip
        # Every rater answers every criterion of every image, repeated groups included.
        self.total = len(CRITERION_KEYS) * len(self.images)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
        return conn

    def media_path(self, media_id: str) -> tuple[Path, str] | None:
        """The file of a media id (from the database, never from a request) and its kind."""
        entry = self.media.get(media_id)
        if entry is None:
            return None
        path = (self.folder / entry[0]).resolve()
        # The path comes from our own database; refuse anything outside the study folder.
        if not path.is_relative_to(self.folder.resolve()):
            log.error("%s: media %s points outside the study folder: %s", self.path, media_id, path)
            return None
        return path, entry[1]

    # --- raters and admins -------------------------------------------------------------

    def rater_by_token(self, token: str) -> Rater | None:
        """The rater whose link carries ``token``, or None."""
        if not TOKEN_RE.match(token):
            return None
        row = (
            self.conn()
            .execute(
                "SELECT id, label, csrf FROM raters WHERE token_sha256 = ?", (token_hash(token),)
            )
            .fetchone()
        )
        return Rater(row["id"], row["label"], row["csrf"]) if row else None

    def is_admin(self, token: str) -> bool:
        """Whether ``token`` is an admin token."""
        if not TOKEN_RE.match(token):
            return False
        row = (
            self.conn()
            .execute("SELECT 1 FROM admins WHERE token_sha256 = ?", (token_hash(token),))
            .fetchone()
        )
        return row is not None

    def raters(self) -> list[sqlite3.Row]:
        """Every rater (id, label, created)."""
        return self.conn().execute("SELECT id, label, created FROM raters ORDER BY id").fetchall()

    # --- ratings -----------------------------------------------------------------------

    def answers(self, rater_id: int) -> dict[tuple[str, str], int]:
        """The rater's own answers: (image id, criterion) → value."""
        rows = self.conn().execute(
            "SELECT image_id, criterion, value FROM ratings WHERE rater_id = ?", (rater_id,)
        )
        return {(r["image_id"], r["criterion"]): r["value"] for r in rows}

    def answered(self, rater_id: int, image_ids: Sequence[str] = ()) -> int:
        """How many of the rater's answers are stored (of ``image_ids`` only, if given)."""
        sql = "SELECT COUNT(*) FROM ratings WHERE rater_id = ?"
        if image_ids:
            sql += f" AND image_id IN ({', '.join('?' * len(image_ids))})"
        return int(self.conn().execute(sql, (rater_id, *image_ids)).fetchone()[0])

    def save(self, rater_id: int, image_id: str, criterion: str, value: int) -> None:
        """Store (or replace) one answer; committed when this returns."""
        if image_id not in self.images:
            raise KeyError(image_id)
        stamp = now()
        with self._write:
            self.conn().execute(
                "INSERT INTO ratings (rater_id, image_id, criterion, value, first_saved, saved)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (rater_id, image_id, criterion) DO UPDATE SET"
                " value = excluded.value, saved = excluded.saved,"
                " revisions = revisions + (value != excluded.value)",
                (rater_id, image_id, criterion, value, stamp, stamp),
            )

    def progress(self) -> list[dict[str, object]]:
        """Per rater: label, answers stored, the total, first and last save time."""
        rows = (
            self.conn()
            .execute(
                "SELECT r.id, r.label, r.created, COUNT(x.value) AS answered,"
                " MIN(x.first_saved) AS first, MAX(x.saved) AS last"
                " FROM raters r LEFT JOIN ratings x ON x.rater_id = r.id"
                " GROUP BY r.id ORDER BY r.id"
            )
            .fetchall()
        )
        return [{**dict(r), "total": self.total} for r in rows]


def count_ratings(path: str | os.PathLike) -> int:
    """Ratings stored in a study file; 0 when the file does not exist (for the rules)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with contextlib.closing(connect(path, readonly=True)) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0])
        except sqlite3.DatabaseError as err:
            raise StudyError(f"{path}: not a rating study ({err})") from err


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
