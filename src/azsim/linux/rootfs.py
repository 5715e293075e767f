"""The Debian root file system every Linux guest boots from: built once, cached, never written.

The cache holds one tree per recipe (``rootfs-<key>``, the key a hash of the recipe below). A
build goes into a temporary directory next to it and is renamed into place, so a tree that exists
is complete; an exclusive ``flock`` makes parallel test workers wait for one build instead of
running two. Guests mount the tree read-only as the lower layer of their own overlay.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_CACHE_DIR = Path("/var/cache/azsim")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: What goes into the tree. Changing anything here changes the cache key (a new build).
RECIPE: dict[str, object] = {
    "tool": "debootstrap",
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["openssh-server", "waagent", "python3", "sudo"],
    # host keys are generated per VM at first boot; a cached tree must not share them
    "post": ["remove ssh host keys", "remove downloaded .deb files"],
    "revision": 1,
}

BUILD_TIMEOUT = 1800.0


class RootfsError(RuntimeError):
    """The root file system could not be built; the message is one line."""


def recipe_key() -> str:
    """A short stable hash of :data:`RECIPE` (the mirror is not part of it: same packages)."""
    text = json.dumps(RECIPE, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def cache_dir_from_env(default: Path = DEFAULT_CACHE_DIR) -> Path:
    """``AZSIM_CACHE_DIR`` when set, else ``default``."""
    value = os.environ.get("AZSIM_CACHE_DIR")
    return Path(value) if value else default


def rootfs_path(cache_dir: Path) -> Path:
    """Where the tree for the current recipe lives (it may not exist yet)."""
    return cache_dir / f"rootfs-{recipe_key()}"


def _stderr_progress(line: str) -> None:
    print(f"azsim: {line}", file=sys.stderr, flush=True)


def ensure_rootfs(
    cache_dir: Path,
    *,
    mirror: str | None = None,
    progress: Callable[[str], None] = _stderr_progress,
) -> Path:
    """Return the cached tree for the current recipe, building it first if it is missing."""
    final = rootfs_path(cache_dir)
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"rootfs-{recipe_key()}.lock"):
        if final.is_dir():  # another worker built it while we waited
            return final
        _remove_stale_builds(cache_dir)
        mirror = mirror or os.environ.get("AZSIM_DEBIAN_MIRROR") or DEFAULT_MIRROR
        started = time.monotonic()
        progress(f"building the Debian root file system once into {final} (about a minute)")
        build = Path(tempfile.mkdtemp(prefix=f".build-{recipe_key()}-", dir=cache_dir))
        try:
            _debootstrap(build, mirror, cache_dir / f"rootfs-{recipe_key()}.log")
            _post_process(build)
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        progress(f"built the Debian root file system in {time.monotonic() - started:.0f} s")
    return final


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_builds(cache_dir: Path) -> None:
    # we hold the lock, so any build directory left is from a build that died
    for stale in cache_dir.glob(f".build-{recipe_key()}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build_env() -> dict[str, str]:
    # only what debootstrap needs: never hand the host's secrets to package scripts
    keep = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", LANG="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    return env


def _debootstrap(target: Path, mirror: str, log_path: Path) -> None:
    # AZSIM_DEBOOTSTRAP: another debootstrap (tests use a stand-in to exercise the cache lock)
    debootstrap = os.environ.get("AZSIM_DEBOOTSTRAP") or shutil.which("debootstrap")
    if debootstrap is None:
        raise RootfsError("debootstrap is not installed (apt-get install debootstrap)")
    include = ",".join(RECIPE["include"])  # type: ignore[arg-type]
    argv = [
        # a private mount namespace: whatever debootstrap mounts inside the target dies with it
        "unshare",
        "--mount",
        "--propagation",
        "private",
        debootstrap,
        f"--variant={RECIPE['variant']}",
        f"--include={include}",
        str(RECIPE["suite"]),
        str(target),
        mirror,
    ]
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, env=_build_env(), timeout=BUILD_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise RootfsError(
                f"debootstrap did not finish within {BUILD_TIMEOUT:.0f} s (log: {log_path})"
            ) from None
    if done.returncode != 0:
        raise RootfsError(
            f"debootstrap from {mirror} failed (exit {done.returncode}): "
            f"{_last_line(log_path)} (log: {log_path})"
        )


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "no output"


def _post_process(root: Path) -> None:
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
