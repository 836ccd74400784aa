"""Atomic writing, the one way every file galtools makes is put in place: written to a temporary file beside its
name, then given that name in one step (:class:`Temporary`; the table outputs of galtools.io.output do the same
over their own lifetime).  On Linux the temporary is an unnamed file (O_TMPFILE) in the destination's folder, named
only when complete (linkat from /proc/self/fd), so that even a process killed with SIGKILL leaves nothing behind;
where the file system cannot make one (NFS, Lustre, macOS), or a writer needs a real name (``named=True``: a
format chosen by extension, a side file beside it), it is a hidden ``.NAME.XXXXXXXX.tmpSUFFIX`` file
(``temporary_beside`` and ``put_in_place``), removed on any failure the process survives.

    Temporary(path)            # the temporary itself: .path to write, .commit() to put in place, .discard()
    atomic_file(path)          # figures, model heads, ONNX models, indexes, checkpoints: OutputError (74) on failure
    replacing(path)            # the same, OSError left to the caller (a cache that falls back when read-only)
    write_bytes(path, data)    # bytes through ``replacing``
    atomic_folder(path)        # a folder made whole beside its name, then put in its place (gal-view export)
    durable=True               # a file rewritten in place (a labels file): flushed to disk, its mode kept
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile

from galtools.errors import OutputError


# Set (to anything) to use named temporaries only: for a file system that says it makes unnamed files but fails to
# link them, and for the tests of the fallback.
NAMED_ONLY = "GALTOOLS_NAMED_TEMPORARIES"
# What open(O_TMPFILE) answers where the file system or the kernel cannot make unnamed files.
NO_TMPFILE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL}
NO_SPACE = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing folder)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def is_no_space(exc: BaseException, folder: str | None = None) -> bool:
    """Whether an error means a full disk or quota: by errno, by the text a library copied the errno into
    (pyarrow, fitsio), or, for a library error with neither, by the free space left where it was writing."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in NO_SPACE:
        return True
    text = str(exc)
    if any(os.strerror(code) in text for code in NO_SPACE) or any(f"errno {code}]" in text.lower() for code in NO_SPACE):
        return True
    if exc.errno is None and folder is not None:
        try:
            info = os.statvfs(folder)
        except OSError:
            return False
        return info.f_bavail * info.f_frsize < (1 << 20) or (info.f_files > 0 and info.f_favail == 0)
    return False


def write_failure(exc: OSError, path: str, folder: str | None = None, device: str | None = None) -> OutputError:
    """The one-line error for a failed write of ``path``: a full disk names the file system (or ``device``, for a
    pipe or a device written into), exit 74 either way."""
    folder = folder or os.path.dirname(os.path.abspath(path))
    if is_no_space(exc, None if device else folder):
        return OutputError(f"no space left on {device or mount_point(folder)} while writing {path}",
                           "free some space, raise the quota, or write elsewhere; the partial output was removed")
    detail = exc.strerror or " ".join(str(exc).split())[:120]
    return OutputError(f"cannot write {path}: {detail}", "check free space and permissions")


def usual_mode(path: str) -> None:
    """Give a file made by mkstemp (private, 0600) the mode the user's umask gives new files."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def temporary_beside(path: str, suffix: str | None = None) -> str:
    """A new, empty, private file in ``path``'s folder (so that renaming it onto ``path`` is atomic), named
    ``.NAME.XXXXXXXX.tmpSUFFIX`` (``suffix``: ``path``'s extension unless given).  Raises OSError."""
    folder, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1] if suffix is None else suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    return temporary


def put_in_place(temporary: str, path: str, durable: bool = False) -> None:
    """Rename ``temporary`` onto ``path`` in one step, with the mode the umask gives new files.  ``durable`` (a
    file rewritten in place, whose loss a crash must not cause): the file keeps the mode of the one it replaces,
    and the data and then the folder are flushed to disk, so that the new file exists whole once this returns.
    Raises OSError."""
    if not durable:
        usual_mode(temporary)
        os.replace(temporary, path)
        return
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    if os.path.exists(path):
        os.chmod(temporary, os.stat(path).st_mode & 0o777)
    else:
        usual_mode(temporary)
    os.replace(temporary, path)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _unnamed_in(folder: str) -> int | None:
    """A new, empty, unnamed file in ``folder`` (its descriptor), or None where none can be made there."""
    if not hasattr(os, "O_TMPFILE") or os.environ.get(NAMED_ONLY) or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno in NO_TMPFILE:
            return None
        raise


class Temporary:
    """The file that becomes ``path`` once complete: write it through ``.path`` (a name any writer can open, but
    does not delete or rename), then :meth:`commit`, or :meth:`discard` it.  Unnamed where the file system allows
    (nothing is left if the process dies; ``.unnamed``), else a hidden file beside ``path`` (``named=True`` asks
    for that: a writer choosing its format by the name's extension, or writing side files beside it).  Raises
    OSError."""

    def __init__(self, path: str, suffix: str | None = None, named: bool = False):
        self.destination = os.path.abspath(path)
        self.folder, self.name = os.path.split(self.destination)
        self.suffix = os.path.splitext(self.name)[1] if suffix is None else suffix
        self._fd = None if named else _unnamed_in(self.folder)
        self.unnamed = self._fd is not None
        self.path = f"/proc/self/fd/{self._fd}" if self.unnamed else temporary_beside(path, self.suffix)

    def commit(self, durable: bool = False) -> None:
        """Give the file its name in one step (an existing file is replaced atomically); :func:`put_in_place`'s
        ``durable``."""
        if not self.unnamed:
            put_in_place(self.path, self.destination, durable)
            return
        if durable:
            os.fsync(self._fd)
            if os.path.exists(self.destination):
                os.fchmod(self._fd, os.stat(self.destination).st_mode & 0o777)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                os.link(self.path, self.name, dst_dir_fd=folder, follow_symlinks=True)   # linkat(AT_SYMLINK_FOLLOW)
            except FileExistsError:   # replacing a file: link under a fresh hidden name, then rename onto it
                self._replace(folder)
            if durable:
                os.fsync(folder)
        finally:
            os.close(folder)
        self.discard()

    def _replace(self, folder: int) -> None:
        while True:
            hidden = f".{self.name}.{secrets.token_hex(4)}.tmp{self.suffix}"
            try:
                os.link(self.path, hidden, dst_dir_fd=folder, follow_symlinks=True)
                break
            except FileExistsError:
                continue
        try:
            os.replace(hidden, self.name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(hidden, dir_fd=folder)
            raise

    def discard(self) -> None:
        """Drop the file (nothing if already committed or discarded)."""
        if self.unnamed:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
        elif os.path.exists(self.path):
            os.unlink(self.path)


@contextlib.contextmanager
def replacing(path: str, durable: bool = False, suffix: str | None = None, named: bool = False):
    """Yield a :class:`Temporary`'s path for ``path``, put in place when the block succeeds and dropped whatever
    happens otherwise.  OSError goes to the caller as it is: for a writer with its own fallback (a read-only
    cache) or message; the tools' files use :func:`atomic_file`."""
    temporary = Temporary(path, suffix, named)
    try:
        yield temporary.path
        temporary.commit(durable)
    finally:
        temporary.discard()


@contextlib.contextmanager
def atomic_file(path: str, durable: bool = False, named: bool = False):
    """Yield a temporary path for ``path`` (:class:`Temporary`; ``named``: a hidden file beside it, same suffix);
    put it in place when the block succeeds and drop it when it fails, so a killed or failed run never leaves a
    half-written file.  A failed write is OutputError (74), naming the file system when it is full.

        check_output_path(path, overwrite)      # before the work
        with atomic_file(path) as temporary:
            figure.savefig(temporary)
    """
    begun = False
    try:
        with replacing(path, durable, named=named) as temporary:
            begun = True
            yield temporary
    except OSError as exc:
        if not begun and not is_no_space(exc):
            raise OutputError(f"cannot write in {os.path.dirname(os.path.abspath(path))}: {exc.strerror}",
                              "check that it exists and is writable") from None
        raise write_failure(exc, path) from None


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yield a new folder beside ``path`` to fill; when the block succeeds it takes the place of ``path`` (a folder
    already there is moved aside first, then removed), and when it fails it is removed.  OutputError (74)."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        building = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write in {parent} ({exc.strerror})", "check the permissions") from None
    try:
        yield building
        os.chmod(building, 0o755)
        if os.path.exists(path):
            old = path + f".old-{os.getpid()}"
            os.replace(path, old)
            os.replace(building, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})", "check the disk and permissions") from None
    finally:
        if os.path.exists(building):
            shutil.rmtree(building, ignore_errors=True)


def write_bytes(path: str, data: bytes, durable: bool = False) -> None:
    """``data`` as the file ``path``, written through :func:`replacing` (OSError to the caller)."""
    with replacing(path, durable) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
