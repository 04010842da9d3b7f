"""Publishing files atomically: write beside the target, then rename, so no reader sees a half-written file.

One convention for everything the project writes:

- ``atomic_output(path)`` yields a temporary file path beside ``path`` and renames it onto ``path`` on success;
  on an exception the temporary file is removed and ``path`` is untouched.
- ``atomic_dir(path)`` does the same for a directory.
- ``atomic_copy(src, dst)`` copies through a synced temporary file.
- ``partial_path(path)`` names the file where a resumable writer keeps its unfinished work
  (``out.h5`` -> ``out.h5.partial``); the writer renames it onto ``path`` once complete, and a restarted
  run continues from it.
"""
import contextlib
import os
import shutil
import tempfile

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str) -> str:
    """Where a resumable writer of ``path`` keeps its unfinished output."""
    return path + PARTIAL_SUFFIX


def _parent(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    return directory


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def publish(tmp: str, path: str, mode: int = None) -> None:
    """Rename ``tmp`` onto ``path``, with a normally created file's permissions (mkstemp uses 0600)."""
    os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
    os.replace(tmp, path)


def temporary_path(path: str, suffix: str = "") -> str:
    """A new empty temporary file beside ``path`` (hidden, ends in ``.tmp``); the caller removes or publishes it."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp",
                               dir=_parent(path))
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` ends the temporary name (before ``.tmp``), for writers that look at the extension.
    """
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, replace: bool = True):
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = os.path.abspath(path)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=_parent(path))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(path):
            if not replace:
                raise FileExistsError(f"{path}: already exists")
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_copy(src: str, dst: str) -> str:
    """Copy ``src`` to ``dst`` through a synced temporary file and a rename: ``dst`` is never partial."""
    with atomic_output(dst) as tmp:
        with open(tmp, "wb") as out, open(src, "rb") as source:
            shutil.copyfileobj(source, out, 16 << 20)
            out.flush()
            os.fsync(out.fileno())
    os.chmod(dst, os.stat(src).st_mode & 0o777)
    return dst
