"""Private links: one random token per rater (and per admin); only its SHA-256 is stored.

A link is ``<base-url>/r/<token>`` (rater) or ``<base-url>/admin/<token>``. The token is
``secrets.token_urlsafe(32)`` (256 bits), shown once: the study file keeps its hash, so a
copy of the file gives nobody a working link. Lost links are replaced by inviting again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ccis.common.atomic import atomic_path
from ccis.rating.store import Store, now, token_hash, transaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invitation:
    """One private link (its token appears nowhere else)."""

    role: str  # "rater" or "admin"
    label: str
    link: str


def invite(
    study: str | os.PathLike,
    *,
    raters: int = 0,
    names: Sequence[str] = (),
    admin: bool = False,
    base_url: str = "http://127.0.0.1:8765",
    out: str | os.PathLike | None = None,
) -> list[Invitation]:
    """Add raters (``names``, or ``raters`` numbered ones) and optionally an admin to the
    study; return their links and, with ``out``, write them to a CSV readable by you only."""
    names = [n.strip() for n in names if n.strip()]
    if names and raters and raters != len(names):
        raise ValueError(f"--raters {raters} but {len(names)} names given")
    if raters < 0:
        raise ValueError(f"raters must be at least 0, got {raters}")
    if not names and not raters and not admin:
        raise ValueError("nothing to do: give --raters N, --names, or --admin")
    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--base-url must start with http:// or https://, got {base_url!r}")
    store = Store(study)
    conn = store.conn()
    made: list[Invitation] = []
    with transaction(conn):
        taken = {r["label"] for r in conn.execute("SELECT label FROM raters")}
        if not names:
            number = len(taken)
            while len(names) < raters:
                number += 1
                if f"rater-{number:02d}" not in taken:
                    names.append(f"rater-{number:02d}")
        clash = sorted(taken.intersection(names))
        if clash or len(set(names)) != len(names):
            raise ValueError(f"{store.path}: rater name(s) already used: {clash or names}")
        for label in names:
            token = secrets.token_urlsafe(32)
            conn.execute(
                "INSERT INTO raters (label, token_sha256, csrf, created) VALUES (?, ?, ?, ?)",
                (label, token_hash(token), secrets.token_urlsafe(24), now()),
            )
            made.append(Invitation("rater", label, f"{base}/r/{token}"))
        if admin:
            count = conn.execute("SELECT COUNT(*) FROM admins").fetchone()[0]
            token = secrets.token_urlsafe(32)
            label = f"admin-{count + 1}"
            conn.execute(
                "INSERT INTO admins (label, token_sha256, created) VALUES (?, ?, ?)",
                (label, token_hash(token), now()),
            )
            made.append(Invitation("admin", label, f"{base}/admin/{token}"))
    # The log names who was invited, never a link.
    log.info("%s: invited %s", store.path, ", ".join(f"{i.label} ({i.role})" for i in made))
    if out is not None:
        write_links(made, out)
    return made


def write_links(invitations: Sequence[Invitation], out: str | os.PathLike) -> Path:
    """The links as CSV (role, label, link), readable and writable by the owner only."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["role", "label", "link"])
    writer.writerows([(i.role, i.label, i.link) for i in invitations])
    out = Path(out)
    with atomic_path(out) as tmp:
        os.chmod(tmp, 0o600)  # before the secrets go in
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    with contextlib.suppress(OSError):
        os.chmod(out, 0o600)
    log.info("wrote %d link(s) to %s (mode 600)", len(invitations), out)
    return out
