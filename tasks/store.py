"""The run store: where weights, tokenised data, shard statistics and records live between stages.

Only keys and small records travel between stages (and through Airflow's XCom); everything large is here.
Keys are deterministic (`gen=3/round=0/cand=2/shard=1.json`), every write is atomic (a temporary file renamed
into place), and a stage writes its completion record last, so a retried task either finds its outputs
complete and returns, or rewrites them with identical content.

`open_store(uri)` picks the implementation from the URI scheme; an S3 store drops in behind the same interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tasks.config import InputError


class StoreError(InputError):
    """A missing object or an unreachable store; the message names the key and the store."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store(ABC):
    """Byte-level object store with JSON and safetensors helpers."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local file holding the object (the object itself for a file store, a cached copy otherwise)."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    def put_json(self, key: str, record: Any) -> None:
        self.put_bytes(key, json.dumps(record, indent=1, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_json_or_none(self, key: str) -> Any:
        return self.get_json(key) if self.exists(key) else None

    def put_tensors(self, key: str, tensors: dict[str, Any]) -> str:
        """Save a flat name -> tensor dict as safetensors; returns the sha256 of the bytes written."""
        from safetensors.torch import save

        data = save({name: t.contiguous() for name, t in tensors.items()})
        self.put_bytes(key, data)
        return sha256_bytes(data)

    def open_tensors(self, key: str):
        """Lazy reader (`safe_open`): tensors are read one at a time with `.get_tensor(name)`."""
        from safetensors import safe_open

        return safe_open(str(self.local_path(key)), framework="pt", device="cpu")

    def get_tensors(self, key: str) -> dict[str, Any]:
        with self.open_tensors(key) as reader:
            return {name: reader.get_tensor(name) for name in reader.keys()}

    def scoped(self, prefix: str) -> Store:
        return _ScopedStore(self, prefix)


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"store {self.uri} cannot be created: {err}") from None

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"store key {key!r} must be relative and stay inside the store")
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"missing object {key!r} in store {self.uri}")
        return path


class _ScopedStore(Store):
    """A view of another store under a key prefix (one pipeline run)."""

    def __init__(self, inner: Store, prefix: str):
        self.inner, self.prefix = inner, prefix.strip("/")
        self.uri = f"{inner.uri.rstrip('/')}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def put_bytes(self, key, data):
        self.inner.put_bytes(self._key(key), data)

    def put_file(self, key, path):
        self.inner.put_file(self._key(key), path)

    def get_bytes(self, key):
        return self.inner.get_bytes(self._key(key))

    def exists(self, key):
        return self.inner.exists(self._key(key))

    def local_path(self, key):
        return self.inner.local_path(self._key(key))


def open_store(uri: str) -> Store:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return LocalStore(unquote(urlparse(uri).path))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise StoreError(f"store {uri!r}: scheme {scheme}:// is not supported yet (use a folder or file://)")
    return LocalStore(uri)


def run_key(run_id: str) -> str:
    """A store-safe folder name for an Airflow or CLI run id (`manual__2026-11-25T10:00:00+00:00`)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", run_id).strip("_") or "run"
