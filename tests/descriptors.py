"""Descriptors numbered past what select() can watch, for tests of a large fleet's load."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest

#: select() cannot watch a descriptor at or above this (FD_SETSIZE)
FD_SETSIZE = 1024


@contextlib.contextmanager
def descriptors_past_fd_setsize() -> Iterator[None]:
    """Hold enough descriptors that the next sockets are numbered past FD_SETSIZE, as in a
    simulator serving a 200-VM fleet with its connections open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * FD_SETSIZE:
        pytest.skip(f"the open-files hard limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * FD_SETSIZE), hard))
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(FD_SETSIZE + 16)]
    try:
        yield
    finally:
        for fd in (null, *held):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
