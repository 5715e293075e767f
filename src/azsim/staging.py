"""Helpers that stage scenario files the same way on every guest OS."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile

COMPRESSIONS = ("gzip", "xz", "bzip2", "zip")


def compressed(data: bytes, how: str, name: str) -> bytes:
    """``data`` as a gzip, xz or bzip2 stream, or a zip archive holding it as one member named
    after the file (``name`` without ``.zip``)."""
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "xz":
        return lzma.compress(data)
    if how == "bzip2":
        return bz2.compress(data)
    if how != "zip":
        raise ValueError(f"unknown compression {how!r}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name.removesuffix(".zip") or "member", data)
    return buffer.getvalue()
