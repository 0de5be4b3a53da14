"""Noticing that a file changed (JWKS files, the config, TLS material) without inotify."""

from __future__ import annotations

import os

Stamp = tuple[int, int, int]


def stamp(path: str | os.PathLike[str]) -> Stamp:
    """(mtime, size, inode) of what ``path`` points at; raises OSError.

    ``os.stat`` follows symlinks, so a Kubernetes ConfigMap or Secret update (an atomic
    ``..data`` symlink swap) changes the stamp even when the new file's mtime is old.
    """
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def stamp_or_none(path: str | os.PathLike[str]) -> Stamp | None:
    try:
        return stamp(path)
    except OSError:
        return None
