"""Result cache on diskcache: key = hash(kind, normalised config, code version); values are bytes, never pickles.

- Values are ``MAGIC + sha256(payload) + payload`` where the payload is an ``np.savez`` archive (loaded with
  ``allow_pickle=False``) holding the arrays and a JSON metadata blob. A truncated or corrupt entry fails the checksum,
  is deleted and recomputed — never served.
- diskcache unpickles values stored in its pickle mode (CVE-2025-69872); :class:`BytesOnlyDisk` refuses to store or
  fetch anything but raw bytes, so nothing placed in the cache directory is ever unpickled, and it refuses value files
  whose recorded path leads outside the cache directory.
- Compute once: a per-key ``flock`` serialises processes and threads asking for the same key; the second waits and
  then reads the first one's result. A killed run holds no lock (the kernel drops it) and leaves no entry (values are
  written only when complete).
- The code version hashes every ``backend/**/*.py`` file, so any change to the code that computes a result misses.
- Directory: ``$BATCHVAR_CACHE_DIR`` or ``cache/`` beside ``app.py``; size bounded (least-recently-used eviction).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import diskcache
import numpy as np
from diskcache.core import MODE_PICKLE

MAGIC = b"BVCACHE1"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZE_LIMIT = 2 * 1024**3


def _code_version() -> str:
    h = hashlib.sha256()
    backend = Path(__file__).resolve().parent
    for path in sorted(backend.rglob("*.py")):
        h.update(str(path.relative_to(backend)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


CODE_VERSION = _code_version()


class BytesOnlyDisk(diskcache.Disk):
    """A diskcache Disk that stores and returns raw bytes only: it never pickles or unpickles a value."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not read and not isinstance(value, bytes):
            raise TypeError("the batchvar cache stores bytes only")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise ValueError("refusing to unpickle a cache value")
        if filename is not None:
            root = os.path.realpath(self._directory)
            full = os.path.realpath(os.path.join(self._directory, filename))
            if os.path.commonpath([root, full]) != root:
                raise ValueError("refusing to read a cache value from outside the cache directory")
        return super().fetch(mode, filename, value, read)

    def put(self, key):
        if not isinstance(key, str):
            raise TypeError("the batchvar cache uses string keys only")
        return super().put(key)


class CorruptEntry(ValueError):
    pass


def encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    payload = {f"a_{k}": np.asarray(v) for k, v in arrays.items()}
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **payload)
    body = buf.getvalue()
    return MAGIC + hashlib.sha256(body).digest() + body


def decode(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    if not isinstance(blob, bytes) or len(blob) < len(MAGIC) + 32 or not blob.startswith(MAGIC):
        raise CorruptEntry("bad header")
    digest, body = blob[len(MAGIC):len(MAGIC) + 32], blob[len(MAGIC) + 32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")}
    return meta, arrays


def make_key(kind: str, config_json: dict, extra: dict | None = None, code_version: str | None = None) -> str:
    blob = json.dumps({"kind": kind, "config": config_json, "extra": extra or {},
                       "code": code_version or CODE_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Disk cache of computed results shared by the app's sessions, the CLI and the tests."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        directory = directory or os.environ.get("BATCHVAR_CACHE_DIR") or ROOT / "cache"
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory / "results"), disk=BytesOnlyDisk, size_limit=size_limit,
                                      eviction_policy="least-recently-used")
        self._locks = self.directory / "locks"
        self._locks.mkdir(exist_ok=True)
        self._thread_lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0}

    def get(self, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        try:
            blob = self._cache.get(key, default=None)
        except ValueError:  # a pickled value was planted: refuse, drop it
            blob = b""
        if blob is None:
            return None
        try:
            return decode(blob)
        except (CorruptEntry, ValueError, OSError, KeyError, json.JSONDecodeError):
            self.stats["corrupt"] += 1
            self._cache.delete(key)
            return None

    def set(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self._cache.set(key, encode(meta, arrays))

    def put_blob(self, key: str, blob: bytes) -> None:
        """Store a finished entry computed elsewhere (a sweep's worker), after checking its checksum and format."""
        decode(blob)  # raises CorruptEntry on a damaged or foreign blob
        self._cache.set(key, blob)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: one process only
            with self._thread_lock:
                yield
            return
        path = self._locks / f"{key[:32]}.lock"
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_compute(self, key: str, compute: Callable[[], tuple[dict, dict[str, np.ndarray]]]
                       ) -> tuple[dict, dict[str, np.ndarray], bool]:
        """(meta, arrays, hit). Computes at most once across processes for the same key."""
        found = self.get(key)
        if found is not None:
            self.stats["hits"] += 1
            return (*found, True)
        with self._key_lock(key):
            found = self.get(key)
            if found is not None:
                self.stats["hits"] += 1
                return (*found, True)
            self.stats["misses"] += 1
            meta, arrays = compute()
            self.set(key, meta, arrays)
            return meta, arrays, False

    def clear(self) -> int:
        return self._cache.clear()

    def volume(self) -> int:
        return self._cache.volume()

    def __len__(self) -> int:
        return len(self._cache)

    def __bool__(self) -> bool:  # an empty cache is still a cache (``cache or default`` must not replace it)
        return True

    def raw(self) -> diskcache.Cache:
        """The underlying diskcache (tests corrupt entries through it)."""
        return self._cache

    def close(self) -> None:
        self._cache.close()


_default: ResultCache | None = None


def default_cache() -> ResultCache:
    global _default
    if _default is None or str(_default.directory) != str(
            Path(os.environ.get("BATCHVAR_CACHE_DIR") or ROOT / "cache").resolve()):
        _default = ResultCache()
    return _default
