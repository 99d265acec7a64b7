"""The run store: where weights, tokenised data, shard statistics and records live between stages.

Only keys and small records travel between stages (and through Airflow's XCom); everything large is here.
Keys are deterministic (`gen=3/round=0/cand=2/shard=1.json`), every write is atomic, and a stage writes its
completion record last, so a retried task either finds its outputs complete and returns, or rewrites them
with identical content.

`open_store(uri)` picks the implementation from the URI. A folder or `file://` URI gives a `LocalStore`, atomic
by writing a temporary file and renaming it. `s3://bucket/prefix` gives an `S3Store` (AWS, MinIO or any
S3-compatible server), atomic because an S3 PUT is, multipart uploads included; it is the store to use when
Airflow workers run on different machines.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.config import InputError


class StoreError(InputError):
    """A missing object or an unreachable store; the message names the key and the store."""


class StoreUnavailable(StoreError):
    """The store did not answer, or answered with a server error, after the client's own retries: an outage
    that a later retry of the stage may outlast, unlike a missing bucket or denied credentials."""

    transient = True


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_key(key: str) -> str:
    """Keys are relative paths that stay inside the store, whatever the backend, so runs cannot clobber each other."""
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise StoreError(f"store key {key!r} must be relative and stay inside the store")
    return key


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

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a folder-like prefix ending without a slash), sorted."""

    def link_file(self, key: str, path: Path) -> bool:
        """Make `path` the object `key` without copying its bytes, where this store can (a hard link in a local
        store on the same filesystem); False, with nothing written, where it cannot."""
        return False

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

    def put_tensor_stream(self, key: str, specs: dict[str, tuple[Any, tuple[int, ...]]], tensors: Iterator[tuple[str, Any]]) -> None:
        """Save safetensors whose tensors arrive one at a time, in `specs` order (name -> (torch dtype, shape)):
        the header is written from the specs first, then each tensor's bytes as it comes, so a model is never
        whole in memory. Here through a temporary file; `LocalStore` writes in place."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tensors.safetensors"
            with open(path, "wb") as f:
                write_tensor_stream(f, specs, tensors)
            self.put_file(key, path)

    def open_tensors(self, key: str) -> TensorFile:
        """Lazy reader: tensors are read one at a time with `.get_tensor(name)`."""
        return TensorFile(self.local_path(key))

    def get_tensors(self, key: str) -> dict[str, Any]:
        with self.open_tensors(key) as reader:
            return {name: reader.get_tensor(name) for name in reader.keys()}

    def scoped(self, prefix: str) -> Store:
        return _ScopedStore(self, prefix)

    def _missing(self, key: str) -> StoreError:
        return StoreError(f"missing object {key!r} in store {self.uri}")


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


_TORCH_DTYPES = {**{code: name for name, code in _SAFETENSORS_DTYPES.items()}, "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def torch_dtype(code: str, where: str = "safetensors"):
    """The torch dtype of a safetensors dtype code (`F32`, `BF16`, ...)."""
    import torch

    if code not in _TORCH_DTYPES:
        raise StoreError(f"{where}: dtype {code}, which this reader does not know")
    return getattr(torch, _TORCH_DTYPES[code])


class TensorFile:
    """A safetensors file read one tensor at a time with plain reads, not a memory map.

    A tensor read costs its own bytes and nothing else: the file's pages stay in the page cache, which the
    kernel reclaims under pressure, instead of piling up in the process's resident set as a mapping's touched
    pages do. A process that walks a population larger than memory keeps a flat footprint this way.
    The interface is the part of `safetensors.safe_open` the pipeline uses: `keys()`, `get_tensor(name)`,
    plus `spec(name)` (dtype and shape from the header, no data read)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            (size,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (struct.error, ValueError) as err:
            self._file.close()
            raise StoreError(f"{self.path} is not a safetensors file: {err}") from None
        header.pop("__metadata__", None)
        self._entries: dict[str, dict[str, Any]] = header
        self._data_start = 8 + size

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def header_specs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (safetensors dtype code, shape) of every tensor, as the header gives them."""
        return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in self._entries.items()}

    def spec(self, name: str) -> tuple[Any, tuple[int, ...]]:
        entry = self._entries[name]
        return torch_dtype(entry["dtype"], f"{self.path}: tensor {name}"), tuple(entry["shape"])

    def get_tensor(self, name: str, rows: slice | None = None):
        """The tensor, or only the block `rows` of its first dimension (contiguous in the file, read alone)."""
        import torch

        dtype, shape = self.spec(name)
        start, end = self._entries[name]["data_offsets"]
        if end - start != math.prod(shape) * dtype.itemsize:
            raise StoreError(f"{self.path}: tensor {name} spans {end - start} bytes, its shape {shape} needs {math.prod(shape) * dtype.itemsize}")
        if rows is not None:
            first, last, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError("rows: a block of consecutive rows")
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            start, end, shape = start + first * row_bytes, start + max(last, first) * row_bytes, (max(last - first, 0), *shape[1:])
        tensor = torch.empty(math.prod(shape), dtype=dtype)
        self._file.seek(self._data_start + start)
        if self._file.readinto(memoryview(tensor.view(torch.uint8).numpy())) != end - start:
            raise StoreError(f"{self.path} is truncated: tensor {name} ends past the end of the file")
        return tensor.reshape(shape)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tensor_specs(reader: TensorFile, names) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name -> (torch dtype, shape) from a reader's header, without reading any tensor."""
    return {name: reader.spec(name) for name in names}


def widest_first(specs: dict[str, tuple[Any, tuple[int, ...]]]) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """`specs` reordered, wider dtypes first, so that `write_tensor_stream` starts every tensor's bytes aligned
    to its element size."""
    return dict(sorted(specs.items(), key=lambda item: -item[1][0].itemsize))


def write_tensor_stream(
    f, specs: dict[str, tuple[Any, tuple[int, ...]]], tensors: Iterator[tuple[str, Any]], metadata: dict[str, str] | None = None
) -> None:
    """The safetensors layout (8-byte little-endian header size, JSON header padded to 8 bytes, the data in
    header order), written as the tensors arrive; each must match its spec. `metadata` is the header's
    `__metadata__` (transformers wants {"format": "pt"} in a checkpoint it loads)."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[str(dtype).removeprefix("torch.")], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    expected = iter(specs.items())
    for name, tensor in tensors:
        want, (dtype, shape) = next(expected, (None, (None, None)))
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"tensor stream: got {name} {tensor.dtype} {tuple(tensor.shape)}, expected {want} {dtype} {shape}")
        f.write(memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
    missing = [name for name, _ in expected]
    if missing:
        raise ValueError(f"tensor stream ended before {missing[:5]}")


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"store {self.uri} cannot be created: {err}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda tmp: tmp.write(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self._atomic_write(key, lambda tmp: shutil.copyfileobj(source, tmp, 16 * MiB))

    def put_tensor_stream(self, key, specs, tensors) -> None:
        self._atomic_write(key, lambda tmp: write_tensor_stream(tmp, specs, tensors))

    def link_file(self, key: str, path: Path) -> bool:
        # Linked under a temporary name, then renamed over the key: readers see the old object or the new one.
        target = self._path(key)
        temporary = target.with_name(f".{target.name}.link-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary.unlink(missing_ok=True)
            os.link(path, temporary)
            os.replace(temporary, target)
        except OSError:  # another filesystem, no hard links there, too many links: the caller copies
            temporary.unlink(missing_ok=True)
            return False
        return True

    def _atomic_write(self, key: str, write) -> None:
        # Readers see the old object or the whole new one: a temporary file beside it, renamed over it.
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
                try:
                    write(tmp)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                except BaseException:
                    os.unlink(tmp.name)
                    raise
            os.replace(tmp.name, path)
        except OSError as err:
            # A full disk or quota may be freed before a retry; a denied permission will not.
            error = StoreUnavailable if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else StoreError
            raise error(f"store {self.uri}: writing {key!r} failed: {err.strerror or err}") from err

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise self._missing(key)
        return path

    def list_keys(self, prefix: str = "") -> list[str]:
        folder = self._path(prefix) if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


MiB = 1024 * 1024

# Error codes S3 and S3-compatible servers answer for an object or bucket that is not there.
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_FORBIDDEN = {"403", "AccessDenied", "Forbidden"}
# Answers no retry changes (boto3's transfer errors carry them only in their message, as "(Code)"); anything
# else that reaches a stage (refused connections, timeouts, 5xx) is an outage.
_PERMANENT = _NOT_FOUND | _FORBIDDEN | {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName", "AccountProblem"}


def s3_client(*, connect_timeout: float = 10, read_timeout: float = 120, max_attempts: int = 8, retry_mode: str = "adaptive"):
    """An S3 client configured by the environment alone, so a DAG can hand it an Airflow connection as variables.

    boto3 resolves everything itself: the endpoint from AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL (AWS when
    neither is set; a custom endpoint gets path-style addressing, which MinIO needs), credentials from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE or an instance role, the region
    from AWS_DEFAULT_REGION. Each client gets a new session because boto3's default session keeps the credentials
    it found first. The retry settings back off on throttling and 5xx answers.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": retry_mode},
    )
    return boto3.session.Session().client("s3", config=config)


def _error_code(err) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class S3Store(Store):
    """Objects in an S3 bucket under a key prefix, with a verified local cache for `local_path`.

    Every object carries the sha256 of its bytes in its metadata (`x-amz-meta-sha256`), recorded when it is
    written and checked when it is read, so a truncated upload or a corrupted object is an error naming the key
    rather than a silently wrong model. Objects written by other tools have no recorded sha256: they are read
    unchecked, and `local_path` downloads them again each time since there is nothing to validate a cached copy by.
    Objects from `multipart_threshold` up travel in parts of `multipart_chunksize`, several at a time.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        cache_dir: str | Path | None = None,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 64 * MiB,
    ):
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        if not bucket or "/" in bucket:
            raise StoreError(f"store {self.uri}: an S3 store needs a bucket name (s3://bucket/prefix)")
        cache_root = cache_dir or os.environ.get("EVOLVER_S3_CACHE") or "~/.cache/evolver/s3"
        self.cache = Path(cache_root).expanduser() / bucket
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)
        self.client = s3_client()
        self.endpoint = self.client.meta.endpoint_url
        self._check_bucket()

    def _check_bucket(self) -> None:
        """Fail in seconds, naming bucket and endpoint, instead of after minutes of retries inside a stage."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError, ParamValidationError
        from botocore.exceptions import ConnectionError as EndpointUnreachable  # refused, DNS failure, connect timeout

        quick = s3_client(connect_timeout=3, read_timeout=10, max_attempts=2, retry_mode="standard")
        try:
            quick.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _error_code(err) in _NOT_FOUND:
                problem = "does not exist"
            elif _error_code(err) in _FORBIDDEN:
                problem = "is forbidden to these credentials"
            else:
                problem = f"cannot be used: {err}"
        except NoCredentialsError:
            problem = "needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        except ParamValidationError as err:
            problem = f"is not a valid bucket name: {err}"
        except (EndpointUnreachable, HTTPClientError) as err:
            hint = "AWS_ENDPOINT_URL_S3 sets the endpoint of MinIO or another S3-compatible server"
            raise StoreUnavailable(f"store {self.uri}: bucket {self.bucket!r} at endpoint {self.endpoint} is unreachable ({err}); {hint}") from None
        except BotoCoreError as err:
            problem = f"cannot be used: {err}"
        raise StoreError(f"store {self.uri}: bucket {self.bucket!r} at endpoint {self.endpoint} {problem}")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, key: str):
        """boto3's exceptions as StoreError naming key, store and endpoint (retries are spent by then)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as err:
            code = _error_code(err) if isinstance(err, ClientError) else ""
            if code in _NOT_FOUND:
                raise self._missing(key) from None
            # Without s3:ListBucket on the bucket, S3 answers 403 rather than 404 for a missing object.
            hint = " (or missing, if the credentials lack s3:ListBucket)" if code in _FORBIDDEN else ""
            permanent = code in _PERMANENT or any(f"({name})" in str(err) for name in _PERMANENT)
            raise (StoreError if permanent else StoreUnavailable)(f"store {self.uri} at {self.endpoint}: object {key!r}{hint}: {err}") from err

    def _verify(self, key: str, recorded: str | None, actual: str) -> None:
        if recorded and recorded != actual:
            raise StoreError(
                f"object {key!r} in store {self.uri} is corrupt: its sha256 is {actual}, {recorded} was recorded at write"
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        self._upload(key, sha256_bytes(data), self.client.upload_fileobj, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> None:
        self._upload(key, sha256_file(path), self.client.upload_file, str(path))

    def _upload(self, key: str, sha: str, upload, source) -> None:
        # The transfer manager switches to a multipart upload from the threshold on; metadata goes with either.
        with self._errors(key):
            upload(source, self.bucket, self._key(key), ExtraArgs={"Metadata": {"sha256": sha}}, Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        # One GET gives body and metadata of the same version of the object.
        with self._errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = response["Body"].read()
        self._verify(key, response["Metadata"].get("sha256"), sha256_bytes(data))
        return data

    def _head(self, key: str) -> dict | None:
        """The object's HEAD answer, or None when there is no such object."""
        from botocore.exceptions import ClientError

        with self._errors(key):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if _error_code(err) in _NOT_FOUND:
                    return None
                raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def list_keys(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        start = f"{root}{prefix.strip('/')}/" if prefix else root
        keys = []
        with self._errors(prefix or "."):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                keys += [obj["Key"].removeprefix(root) for obj in page.get("Contents", [])]
        return sorted(keys)

    def local_path(self, key: str) -> Path:
        """The cached copy when its sha256 matches the object's, else a fresh download, verified before it is used.

        The download goes to a temporary file renamed into place, so a reader never sees half a file, and one that
        has the previous copy open keeps reading the old bytes.
        """
        head = self._head(key)
        if head is None:
            raise self._missing(key)
        recorded = head["Metadata"].get("sha256")
        path = self.cache / self._key(key)
        if recorded and path.is_file() and sha256_file(path) == recorded:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            with self._errors(key):
                self.client.download_file(self.bucket, self._key(key), tmp, Config=self.transfer)
            self._verify(key, recorded, sha256_file(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
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

    def put_tensor_stream(self, key, specs, tensors):
        self.inner.put_tensor_stream(self._key(key), specs, tensors)

    def link_file(self, key, path):
        return self.inner.link_file(self._key(key), path)

    def get_bytes(self, key):
        return self.inner.get_bytes(self._key(key))

    def exists(self, key):
        return self.inner.exists(self._key(key))

    def local_path(self, key):
        return self.inner.local_path(self._key(key))

    def list_keys(self, prefix=""):
        inner = self.inner.list_keys(self._key(prefix) if prefix else self.prefix)
        return [key.removeprefix(f"{self.prefix}/") for key in inner]


def open_store(uri: str) -> Store:
    """The store behind a folder, a `file://` URI or an `s3://bucket/prefix` URI; an S3 bucket is checked at once."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return LocalStore(uri)
    if scheme == "file":
        from urllib.parse import unquote, urlparse

        return LocalStore(unquote(urlparse(uri).path))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"store {uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        if ".." in prefix.split("/"):
            raise StoreError(f"store {uri!r}: a '..' in an object prefix; name the prefix itself")
        return S3Store(bucket, prefix)
    raise StoreError(f"store {uri!r}: scheme {scheme}:// is not supported (use a folder, file:// or s3://)")


def run_key(run_id: str) -> str:
    """A store-safe folder name for an Airflow or CLI run id (`manual__2026-11-25T10:00:00+00:00`). An id
    that tries to reach outside its run's folder is refused rather than quietly renamed."""
    if any(bad in run_id for bad in ("/", "\\", "..", "\x00")):
        raise StoreError(f"run id {run_id!r}: '/', '\\', '..' and NUL are not allowed in a run id")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", run_id).strip("_") or "run"
