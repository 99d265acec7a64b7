"""The store contract, shared by the folder store and the S3 store (against a real moto S3 server).

S3 adds what a folder does not need: multipart transfers, sha256 verification, the local cache behind
`local_path`, and early, precise errors when the bucket or the endpoint is wrong.
"""

import os
import time

import pytest
import torch

from tasks.store import LocalStore, MiB, S3Store, StoreError, open_store, sha256_bytes, sha256_file, tensor_specs
from tests.servers import free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    monkeypatch.setenv("EVOLVER_S3_CACHE", str(tmp_path / "cache"))
    return open_store(f"s3://{request.getfixturevalue('s3_bucket')}/runs")


@pytest.fixture
def s3(s3_bucket, tmp_path):
    """An S3 store whose multipart threshold is moto's smallest part size, so 11 MiB takes three parts."""
    return S3Store(s3_bucket, "runs", cache_dir=tmp_path / "cache", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


# The contract, for both stores


def test_bytes_and_json_round_trip(store):
    assert not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"\x00weights")
    store.put_json("a/c.json", {"x": [1, 2]})
    assert store.exists("a/b.bin") and store.get_bytes("a/b.bin") == b"\x00weights"
    assert store.get_json("a/c.json") == {"x": [1, 2]}
    assert store.get_json_or_none("a/none.json") is None
    store.put_bytes("a/b.bin", b"rewritten")
    assert store.local_path("a/b.bin").read_bytes() == b"rewritten"


def test_missing_key_names_key_and_store(store):
    for read in (store.get_bytes, store.get_json, store.local_path):
        with pytest.raises(StoreError, match=rf"missing object 'gen=1/x.json' in store {store.uri}"):
            read("gen=1/x.json")


@pytest.mark.parametrize("key", ["/abs.json", "a/../../b.json", ""])
def test_keys_must_stay_inside_the_store(store, key):
    with pytest.raises(StoreError, match="must be relative"):
        store.put_bytes(key, b"x")


def test_tensors_round_trip(store):
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(), "b": torch.ones(4, dtype=torch.bfloat16)}
    sha = store.put_tensors("m.safetensors", tensors)
    assert sha == sha256_bytes(store.get_bytes("m.safetensors"))
    with store.open_tensors("m.safetensors") as reader:
        assert sorted(reader.keys()) == ["b", "w"] and torch.equal(reader.get_tensor("b"), tensors["b"])
    loaded = store.get_tensors("m.safetensors")
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_tensor_stream_writes_what_put_tensors_writes_and_checks_every_tensor(store):
    tensors = {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # not contiguous
        "b": torch.ones(5, dtype=torch.bfloat16),
        "steps": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "empty": torch.zeros(0, 4),
    }
    store.put_tensors("ref.safetensors", tensors)
    with store.open_tensors("ref.safetensors") as reader:
        specs = tensor_specs(reader, list(tensors))
    scoped = store.scoped("run")
    scoped.put_tensor_stream("m.safetensors", specs, iter(tensors.items()))
    loaded = scoped.get_tensors("m.safetensors")
    assert sorted(loaded) == sorted(tensors)
    assert all(torch.equal(loaded[n], t) and loaded[n].dtype == t.dtype for n, t in tensors.items())
    with pytest.raises(ValueError, match=r"expected b torch.bfloat16 \(5,\)"):
        scoped.put_tensor_stream("bad.safetensors", specs, iter([("w", tensors["w"]), ("b", torch.ones(4, dtype=torch.bfloat16))]))
    with pytest.raises(ValueError, match="ended before"):
        scoped.put_tensor_stream("short.safetensors", specs, iter([("w", tensors["w"])]))
    assert not scoped.exists("bad.safetensors") and not scoped.exists("short.safetensors")
    assert scoped.list_keys() == ["m.safetensors"]


def test_scoped_store_is_a_prefix_of_the_inner_one(store):
    run = store.scoped("/run-1/")
    assert run.uri == f"{store.uri}/run-1"
    run.put_json("run.json", {"id": 1})
    run.put_tensors("t.safetensors", {"x": torch.zeros(2)})
    assert store.get_json("run-1/run.json") == {"id": 1} and run.exists("run.json")
    assert torch.equal(run.get_tensors("t.safetensors")["x"], torch.zeros(2))
    with pytest.raises(StoreError, match="run-1/gone"):
        run.get_bytes("gone")


def test_put_file(store, tmp_path):
    source = tmp_path / "config.json"
    source.write_text('{"hidden_size": 8}')
    store.put_file("final/model/config.json", source)
    assert store.get_json("final/model/config.json") == {"hidden_size": 8}
    assert store.local_path("final/model/config.json").read_bytes() == source.read_bytes()


def test_list_keys_under_a_prefix(store):
    for key in ("a/x.json", "a/b/y.json", "ab.json", "c.json"):
        store.put_json(key, {})
    assert store.list_keys("a") == ["a/b/y.json", "a/x.json"]  # a folder-like prefix: not "ab.json"
    assert store.list_keys() == ["a/b/y.json", "a/x.json", "ab.json", "c.json"]
    assert store.scoped("a").list_keys() == ["b/y.json", "x.json"] and store.scoped("a").list_keys("b") == ["b/y.json"]
    assert store.list_keys("nothing") == []


# S3 only


def test_s3_uris(s3_bucket):
    assert open_store(f"s3://{s3_bucket}/runs/a/").uri == f"s3://{s3_bucket}/runs/a"
    assert open_store(f"s3://{s3_bucket}").uri == f"s3://{s3_bucket}"
    for uri in ("s3://", "s3:///runs"):
        with pytest.raises(StoreError, match="needs a bucket"):
            open_store(uri)
    with pytest.raises(StoreError, match="gs:// is not supported"):
        open_store("gs://bucket/runs")


def test_multipart_round_trip_records_the_sha256(s3, tmp_path):
    data = os.urandom(11 * MiB)
    s3.put_bytes("big.bin", data)
    head = s3.client.head_object(Bucket=s3.bucket, Key="runs/big.bin")
    assert head["ETag"].endswith('-3"')  # three parts
    assert head["Metadata"]["sha256"] == sha256_bytes(data)
    assert s3.get_bytes("big.bin") == data

    source = tmp_path / "big-file.bin"
    source.write_bytes(data[::-1])
    s3.put_file("big-file.bin", source)
    assert s3.client.head_object(Bucket=s3.bucket, Key="runs/big-file.bin")["ETag"].endswith('-3"')
    assert sha256_file(s3.local_path("big-file.bin")) == sha256_file(source)


def test_corrupt_object_is_refused(s3):
    s3.put_bytes("w.bin", b"good weights")
    recorded = s3.client.head_object(Bucket=s3.bucket, Key="runs/w.bin")["Metadata"]
    s3.client.put_object(Bucket=s3.bucket, Key="runs/w.bin", Body=b"bad weights!", Metadata=recorded)
    for read in (s3.get_bytes, s3.local_path):
        with pytest.raises(StoreError, match=r"object 'w.bin' in store s3://.*/runs is corrupt"):
            read("w.bin")
    assert list(s3.cache.rglob("*")) == [s3.cache / "runs"]  # no half-verified download left behind


def test_objects_without_a_recorded_sha256_are_read_unchecked(s3):
    s3.client.put_object(Bucket=s3.bucket, Key="runs/foreign.txt", Body=b"uploaded by hand")
    assert s3.get_bytes("foreign.txt") == b"uploaded by hand"
    assert s3.local_path("foreign.txt").read_bytes() == b"uploaded by hand"


def test_cached_copy_is_reused_until_the_object_changes(s3):
    s3.put_bytes("m.safetensors", b"v1")
    path = s3.local_path("m.safetensors")
    assert path == s3.cache / "runs/m.safetensors"
    inode = path.stat().st_ino
    assert s3.local_path("m.safetensors").stat().st_ino == inode  # reused, not downloaded again

    s3.put_bytes("m.safetensors", b"v2")
    assert s3.local_path("m.safetensors").read_bytes() == b"v2"

    path.write_bytes(b"damaged on disk")
    assert s3.local_path("m.safetensors").read_bytes() == b"v2"


def test_missing_bucket_fails_fast_naming_bucket_and_endpoint(s3_endpoint):
    with pytest.raises(StoreError, match=rf"bucket 'no-such-bucket' at endpoint {s3_endpoint} does not exist") as missing:
        open_store("s3://no-such-bucket/runs")
    assert not missing.value.transient  # a retry cannot create the bucket: the task fails at once


def test_unreachable_endpoint_fails_fast(s3_endpoint, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    start = time.monotonic()
    with pytest.raises(StoreError, match=rf"bucket 'runs' at endpoint {endpoint} is unreachable") as unreachable:
        open_store("s3://runs/x")
    assert time.monotonic() - start < 10
    assert unreachable.value.transient  # an outage: the drivers retry the stage


def test_a_full_disk_is_a_clear_retryable_error_that_leaves_no_partial_object(tmp_path):
    """The file store on a real tmpfs of 256 KiB (mounting one needs root, as in CI's container)."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("a size-limited tmpfs needs root and mount rights; bench.reliability's disk-full case needs them too")
    try:
        store = LocalStore(folder)
        store.put_bytes("small.bin", b"x" * 1024)
        with pytest.raises(StoreError, match=r"writing 'big.bin' failed: No space left on device") as full:
            store.put_bytes("big.bin", b"x" * 512 * 1024)
        assert full.value.transient
        assert sorted(p.name for p in folder.iterdir()) == ["small.bin"]  # no temporary file, no partial object
        subprocess.run(["mount", "-o", "remount,size=2m", str(folder)], check=True)
        store.put_bytes("big.bin", b"x" * 512 * 1024)  # the retry after space is freed
        assert store.get_bytes("big.bin") == b"x" * 512 * 1024
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_tensor_file_reads_whole_tensors_and_blocks_of_rows_and_refuses_bad_files(store, tmp_path):
    from tasks.store import StoreError, TensorFile

    tensors = {"w": torch.arange(24, dtype=torch.float32).reshape(6, 4), "h": torch.arange(6, dtype=torch.bfloat16), "s": torch.tensor(3.0)}
    store.put_tensors("m.safetensors", tensors)
    with store.open_tensors("m.safetensors") as reader:
        assert reader.keys() == ["h", "s", "w"]
        assert reader.spec("h") == (torch.bfloat16, (6,))
        for name, tensor in tensors.items():
            assert torch.equal(reader.get_tensor(name), tensor) and reader.get_tensor(name).dtype == tensor.dtype
        assert torch.equal(reader.get_tensor("w", slice(2, 5)), tensors["w"][2:5])
        assert reader.get_tensor("w", slice(5, 9)).shape == (1, 4)
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(StoreError, match="not a safetensors file"):
        TensorFile(tmp_path / "junk.safetensors")
    whole = store.local_path("m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[:-8])
    with TensorFile(tmp_path / "cut.safetensors") as reader, pytest.raises(StoreError, match="truncated"):
        reader.get_tensor("h")  # the last in the file: safetensors puts wider dtypes first
