"""Write files and folders so that a reader never sees half of them.

Every output goes to a temporary sibling first and is renamed into place; a rename
inside one file system is atomic, so an interrupted run leaves either the old output
or none, never a truncated one. A write that fails (a full disk, a quota, an I/O error)
removes its temporary and raises :class:`WriteFailed`, naming the output and the free
space left; the previous complete output, if any, stays in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_MARK = ".tmp-"
# errno values that mean "the file system would not take the bytes".
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


class WriteFailed(OSError):
    """An output could not be written; the message names it and the free space."""


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown free space"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return ""  # unreachable


def is_write_error(err: BaseException, tmp: str | os.PathLike | None = None) -> bool:
    """Whether ``err`` is a failure to write (not, say, a missing input read meanwhile)."""
    if "No space left" in str(err) or "Disk quota exceeded" in str(err):
        return True  # also safetensors' and pyarrow's own exception types
    if not isinstance(err, OSError):
        # torch.save reports a full disk as RuntimeError("... failed writing file ...").
        return isinstance(err, RuntimeError) and "writ" in str(err).lower()
    if err.errno in WRITE_ERRNOS:
        return True
    return bool(tmp and err.filename and str(err.filename).startswith(str(tmp)))


def write_failed(target: str | os.PathLike, err: BaseException, what: str = "") -> WriteFailed:
    """The :class:`WriteFailed` for ``target`` (``what``: e.g. "checkpoint")."""
    target = Path(target)
    reason = getattr(err, "strerror", None) or str(err)
    failed = WriteFailed(
        f"could not write {what + ' ' if what else ''}{target}: {reason} "
        f"({free_space(target.parent)} on its file system); no partial file is left, and "
        f"the previous {target.name}, if any, is unchanged"
    )
    failed.errno = getattr(err, "errno", None) or errno.EIO
    return failed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARK}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give outputs the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except Exception as err:
        if isinstance(err, WriteFailed) or not is_write_error(err, tmp_path):
            raise
        tmp_path.unlink(missing_ok=True)  # first, so the free space reported is real
        raise write_failed(target, err) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: changing the umask later, while other threads create files, races.
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; it replaces ``target`` on success.

    An existing ``target`` is removed only after the new folder is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        try:
            yield tmp
        except Exception as err:
            if isinstance(err, WriteFailed) or not is_write_error(err, tmp):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # first, so the free space reported is real
            raise write_failed(target, err) from err
        if target.exists():
            old = target.with_name(f".{target.name}{TMP_MARK}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete temporaries a killed run left for output ``name`` in ``folder``; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f".{name}{TMP_MARK}*"))
    for path in stale:
        remover: Callable[[Path], None] = (
            (lambda p: shutil.rmtree(p, ignore_errors=True)) if path.is_dir() else Path.unlink
        )
        remover(path)
    return stale
