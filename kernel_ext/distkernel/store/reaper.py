"""Names of the files a cluster keeps in shared memory and on disk, and their clean-up.

This module is the one owner of those names. A cluster (one ``init``) has a
space of its own, named by the driver's pid and a random token::

    <shm dir>/.distkernel-<pid>-<token>.lock         held (flock) while the driver lives
    <shm dir>/distkernel-<pid>-<token>-<random>      arena chunks, mode 0600
    <spill dir>/distkernel-<pid>-<token>-spill-<random>/   spilled objects, mode 0700

Every name has a random part, so another local user cannot guess one and
create it first; a collision is retried with a new name. Whether a driver
still lives is decided by its lock, not by its pid (pids repeat across PID
namespaces sharing one ``/dev/shm``): a live driver holds an ``flock`` on its
lock file, which a sweeper cannot take. The lock file appears already locked
(``O_TMPFILE`` then a link), so no sweeper can ever find it unlocked while
its driver lives.

Clean-up happens three ways: the driver removes its space at shutdown; a
worker that sees its driver die removes it (SIGKILL leaves nobody else); and
every start sweeps spaces whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass

import psutil

from distkernel.core import config

_TOKEN = re.compile(r"[0-9a-f]{12}")
_SEGMENT_TAIL = re.compile(r"[0-9a-f]{16}")
_SPACE = re.compile(r"^\.?distkernel-(\d+)-([0-9a-f]{12})(?:\.lock|-[0-9a-z-]+)$")
_LEGACY = re.compile(r"^distkernel-(\d+)-")
_ATTEMPTS = 20


@dataclass(frozen=True)
class Space:
    """Where one cluster's files live, and what their names look like.

    The driver makes one with :meth:`create`; a worker rebuilds it from the three
    strings of :meth:`describe` and uses it to check every name it is sent.
    """

    shm_dir: str
    spill_base: str
    driver_pid: int
    token: str

    @property
    def prefix(self) -> str:
        """Every file of this space starts with this."""
        return f"{config.SEGMENT_PREFIX}{self.driver_pid}-{self.token}"

    @property
    def lock_path(self) -> str:
        return os.path.join(self.shm_dir, f".{self.prefix}.lock")  # hidden: not an object

    def describe(self) -> list[str]:
        """What a worker needs to rebuild this space (command-line arguments)."""
        return [self.shm_dir, self.spill_base, f"{self.driver_pid}-{self.token}"]

    @classmethod
    def from_description(cls, shm_dir: str, spill_base: str, owner: str) -> Space:
        pid, _, token = owner.partition("-")
        if not pid.isdigit() or not _TOKEN.fullmatch(token):
            msg = f"not a space owner: {owner!r}"
            raise ValueError(msg)
        return cls(shm_dir, spill_base, int(pid), token)

    # -- names -------------------------------------------------------------------------------

    def new_segment_name(self) -> str:
        return f"{self.prefix}-{secrets.token_hex(8)}"

    def segment_path(self, name: str) -> str:
        """The path of one of this space's segments; refuses any other name (a worker's
        message, or a crafted one, must never make us open or delete another file)."""
        if not self.owns(name):
            msg = f"{name!r} is not a shared-memory segment of this cluster"
            raise ValueError(msg)
        return os.path.join(self.shm_dir, name)

    def owns(self, name: str) -> bool:
        return (isinstance(name, str) and name.startswith(self.prefix + "-")
                and _SEGMENT_TAIL.fullmatch(name[len(self.prefix) + 1:]) is not None)

    def spill_dir_candidate(self) -> str:
        return os.path.join(self.spill_base, f"{self.prefix}-spill-{secrets.token_hex(8)}")

    def owns_spill_file(self, spill_dir: str, path: str) -> bool:
        """A path is one of our spilled objects: a plain name inside our spill folder."""
        return (os.path.dirname(path) == spill_dir
                and os.path.basename(spill_dir).startswith(self.prefix + "-spill-")
                and os.path.dirname(spill_dir) == self.spill_base
                and re.fullmatch(r"[0-9a-f]+", os.path.basename(path)) is not None)

    # -- life --------------------------------------------------------------------------------

    @classmethod
    def create(cls, driver_pid: int) -> tuple[Space, int]:
        """A new space and the descriptor of its held lock (close it to let go)."""
        for _ in range(_ATTEMPTS):
            space = cls(config.SHM_DIR, config.spill_base(), driver_pid, secrets.token_hex(6))
            fd = _create_locked(space.lock_path)
            if fd is not None:
                return space, fd
        msg = (f"could not create a lock file in {config.SHM_DIR}: {_ATTEMPTS} random names "
               f"were taken. Check who creates distkernel-* files there.")
        raise FileExistsError(msg)

    def create_file(self, size: int) -> tuple[str, int]:
        """A new segment of ``size`` bytes, space reserved (``fallocate``), open for writing.

        Raises ``OSError(ENOSPC)`` when the shared-memory folder is full; writes into a
        segment made here can then never fail with SIGBUS.
        """
        if shutil.disk_usage(self.shm_dir).free < size:  # a failing fallocate costs time
            raise OSError(errno.ENOSPC, f"{self.shm_dir} has less than {size} bytes free")
        for _ in range(_ATTEMPTS):
            name = self.new_segment_name()
            path = os.path.join(self.shm_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:  # taken by someone else: try another random name
                continue
            try:
                reserve_space(fd, size)
            except BaseException:
                os.close(fd)
                _unlink_quietly(path)
                raise
            return name, fd
        msg = f"could not create a segment in {self.shm_dir}: {_ATTEMPTS} random names were taken"
        raise FileExistsError(msg)

    def remove_all(self) -> int:
        """Remove every file of this space, the lock last; returns how many were removed."""
        removed = 0
        for name in _listdir(self.shm_dir):
            if name.startswith(self.prefix + "-"):
                removed += _unlink_quietly(os.path.join(self.shm_dir, name))
        for name in _listdir(self.spill_base):
            if name.startswith(self.prefix + "-spill-"):
                shutil.rmtree(os.path.join(self.spill_base, name), ignore_errors=True)
                removed += 1
        return removed + _unlink_quietly(self.lock_path)


def reserve_space(fd: int, size: int) -> None:
    """Size a file and make its filesystem set the space aside now.

    A tmpfs file that was only truncated to size gets its pages when they are first
    written, and a write through a mapping into a full tmpfs kills the process with
    SIGBUS. With the space reserved, a full folder is an ``ENOSPC`` error here instead.
    """
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate
            return
        raise


def _create_locked(path: str) -> int | None:
    """Create ``path`` holding an flock on it, or None if the name is taken."""
    folder = os.path.dirname(path)
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):  # no O_TMPFILE here: create, then lock at once
        return _create_then_lock(path)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N gives the unnamed file its name;
        # os.link uses linkat (not link) only when a dir_fd is given.
        os.link(f"/proc/self/fd/{fd}", os.path.basename(path), dst_dir_fd=folder_fd,
                follow_symlinks=True)
    except FileExistsError:
        os.close(fd)
        return None
    except OSError:  # no /proc: name it the plain way (a sweeper may see it unlocked an
        os.close(fd)  # instant before it is locked, and a live driver's files are then lost)
        return _create_then_lock(path)
    finally:
        os.close(folder_fd)
    return fd


def _create_then_lock(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


# -- sweeping ----------------------------------------------------------------------------------

def segments_of(driver_pid: int) -> list[str]:
    """Names in the shm folder that a driver with this pid made (any of its clusters)."""
    prefix = f"{config.SEGMENT_PREFIX}{driver_pid}-"
    return [n for n in _listdir(config.SHM_DIR) if n.startswith(prefix)]


def sweep_dead_drivers() -> int:
    """Remove the spaces of drivers that no longer run, if they are ours to remove."""
    removed = 0
    uid = os.getuid()
    spaces: set[tuple[int, str]] = set()
    for name in _listdir(config.SHM_DIR):
        match = _SPACE.match(name)
        if match is not None:
            spaces.add((int(match.group(1)), match.group(2)))
        elif _legacy_dead(name):
            removed += _remove_if_owned(os.path.join(config.SHM_DIR, name), uid)
    for pid, token in spaces:
        space = Space(config.SHM_DIR, config.spill_base(), pid, token)
        if _abandoned(space, uid):
            removed += space.remove_all()
    return removed + _sweep_spill_folders(uid)


def _abandoned(space: Space, uid: int) -> bool:
    """Nobody holds the space's lock (or it has none left): its driver is gone."""
    try:
        fd = os.open(space.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        # A driver makes its lock before any other file and removes it last, so files
        # without a lock are what a clean-up interrupted half-way left.
        return True
    except OSError:
        return False  # not ours to open: not ours to remove
    try:
        if os.fstat(fd).st_uid != uid:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its driver holds it: alive
        return True
    finally:
        os.close(fd)


def _sweep_spill_folders(uid: int) -> int:
    """Spill folders whose space has no lock file left."""
    removed = 0
    base = config.spill_base()
    for name in _listdir(base):
        match = re.match(r"^distkernel-(\d+)-([0-9a-f]{12})-spill-", name)
        if match is None:
            continue
        space = Space(config.SHM_DIR, base, int(match.group(1)), match.group(2))
        path = os.path.join(base, name)
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and _abandoned(space, uid):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def _legacy_dead(name: str) -> bool:
    """A file named by an older version (``distkernel-<pid>-...``, no lock) whose pid is gone."""
    match = _LEGACY.match(name)
    return match is not None and not psutil.pid_exists(int(match.group(1)))


def _remove_if_owned(path: str, uid: int) -> int:
    try:
        if os.lstat(path).st_uid != uid:
            return 0
    except FileNotFoundError:
        return 0
    return _unlink_quietly(path)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _unlink_quietly(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0
