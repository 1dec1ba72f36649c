"""Storage URIs (raymeta/storage.py) and checkpoints on object storage, against a real S3-protocol
server on loopback (tests/s3server.py); damaged and unwritable checkpoints on a local disk."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch

from raymeta import storage
from raymeta.config import ExperimentConfig, ModelConfig
from raymeta.core.checkpoint import MANIFEST, checkpoint_problem, latest_checkpoint, save_checkpoint
from raymeta.core.model import load_encoder, resolve_model_path
from raymeta.errors import ModelError, RaymetaError
from raymeta.train.checkpoint_mirror import pull_latest_checkpoint, push_checkpoint

from ..conftest import TINY_BERT


@pytest.fixture()
def encoder():
    torch.manual_seed(0)
    return load_encoder(ModelConfig(from_config=TINY_BERT))


def save(out, step, encoder, tokenizer, **kw):
    return save_checkpoint(out, step, encoder=encoder, tokenizer=tokenizer, cfg=ExperimentConfig(),
                           tensors={"optim.0.exp_avg": torch.ones(3) * step}, state={"x": step},
                           **kw)


def test_uri_forms():
    assert storage.is_uri("s3://b/p") and storage.is_uri("gs://b") and storage.is_uri("memory://x")
    assert (not storage.is_uri("runs/x") and not storage.is_uri("/abs/x")
            and not storage.is_uri("file:///tmp/x"))
    assert storage.join("s3://b/p/", "checkpoints", "step-1") == "s3://b/p/checkpoints/step-1"
    with pytest.raises(storage.StorageError,
                       match=r"^output_dir s3://\*\*\*@b/p: credentials inside the URI"):
        storage.check_uri("s3://KEY:SECRET@b/p")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.check_uri("s3:///p")
    with pytest.raises(storage.StorageError, match=r"^nope://b/p: cannot open its filesystem"):
        storage.filesystem("nope://b/p")


def test_upload_download_listing_delete_round_trip(s3, tmp_path):
    bucket = s3()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    uri = storage.join(bucket, "tree")
    storage.upload(src, uri)
    assert storage.listing(uri, recursive=True) == {"a.txt": 1, "sub": None, "sub/b.bin": 1000}
    back = storage.download(uri, tmp_path / "back")
    assert ((back / "a.txt").read_text() == "a"
            and (back / "sub" / "b.bin").read_bytes() == b"\0" * 1000)
    assert storage.read_bytes(storage.join(uri, "a.txt")) == b"a"
    storage.delete(uri)
    assert storage.listing(uri) == {} and not storage.exists(storage.join(uri, "a.txt"))


def test_fetch_caches_and_refetches_a_changed_object(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMETA_CACHE_DIR", str(tmp_path / "cache"))
    uri = storage.join(s3(), "data", "x.csv")
    storage.write_bytes(uri, b"text,label\na,b\n")
    first = storage.fetch(uri)
    assert first.read_bytes() == b"text,label\na,b\n" and storage.fetch(uri) == first
    storage.write_bytes(uri, b"text,label\na,b\nc,d\n")
    assert storage.fetch(uri).read_bytes().endswith(b"c,d\n")


def test_missing_bucket_and_missing_object_are_one_line_naming_the_uri(s3):
    s3()  # the server runs
    missing = (r"^s3://no-such-bucket-x/run/f: cannot write: the bucket 'no-such-bucket-x' "
               r"does not exist")
    with pytest.raises(storage.StorageError, match=missing):
        storage.write_bytes("s3://no-such-bucket-x/run/f", b"x")
    with pytest.raises(storage.StorageError, match=r"^s3://no-such-bucket-x/run: not found"):
        storage.fetch("s3://no-such-bucket-x/run")


def test_refused_credentials_are_one_line_naming_the_uri(tmp_path, monkeypatch):
    from ..s3server import free_port, moto_server

    port = free_port()
    with moto_server(port, tmp_path / "auth.log", auth=True) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(storage.StorageError,
                           match=r"^s3://bucket/run/f: cannot write: the credentials were refused"):
            storage.write_bytes("s3://bucket/run/f", b"x")


def test_a_model_directory_on_s3_loads_by_its_uri(s3, tmp_path, encoder, tokenizer, monkeypatch):
    monkeypatch.setenv("RAYMETA_CACHE_DIR", str(tmp_path / "cache"))
    local = tmp_path / "m"
    encoder.save_pretrained(local)
    tokenizer.save_pretrained(local)
    uri = storage.join(s3(), "models", "m")
    storage.upload(local, uri)
    path = resolve_model_path(uri, storage.local_model_path)
    assert path == storage.local_model_path(uri) and (tmp_path / "cache") in Path(path).parents
    again = load_encoder(ModelConfig(name_or_path=uri), fetch=storage.local_model_path)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 again.state_dict().values()))
    # core reads local paths only: a loader given a URI and no way to fetch it says so, in one line
    with pytest.raises(ModelError, match=r"^model 's3://[^']*/models/m': a storage URI, but this"):
        load_encoder(ModelConfig(name_or_path=uri))


def test_the_either_form_helpers_take_a_local_path_too(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "best.json").write_text('{"step": 3}')
    (run / "metrics.jsonl").write_text("")
    assert storage.join(str(run), "best", "best.json") == str(run / "best" / "best.json")
    assert storage.exists(storage.join(run, "best", "best.json"))
    assert not storage.exists(str(run / "nope"))
    assert storage.exists(f"file://{run}/metrics.jsonl")
    assert storage.read_text(storage.join(str(run), "best", "best.json")) == '{"step": 3}'
    with pytest.raises(FileNotFoundError):  # a local file keeps Path's error
        storage.read_bytes(str(run / "nope"))
    storage.delete(str(run / "best"))
    storage.delete(str(run / "metrics.jsonl"))
    storage.delete(str(run / "nope"))  # nothing there is fine, as for a URI
    assert list(run.iterdir()) == []
    assert storage.absolute("s3://b/p") == "s3://b/p"
    assert storage.absolute("rel") == str(Path("rel").resolve())
    assert storage.local_model_path("bert-base-uncased") == "bert-base-uncased"
    assert storage.local_model_path(str(run)) == str(run)


# -- checkpoints: manifests, damage, object storage, a full disk
# ----------------------------------------------


def test_every_checkpoint_has_a_manifest_of_its_files(tmp_path, encoder, tokenizer):
    path = save(tmp_path, 1, encoder, tokenizer)
    assert (path / MANIFEST).is_file() and checkpoint_problem(path) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "lose_file"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_complete_one(damage, tmp_path,
                                                                           encoder, tokenizer,
                                                                           caplog):
    good = save(tmp_path, 1, encoder, tokenizer)
    bad = save(tmp_path, 2, encoder, tokenizer)
    f = bad / "trainer_state.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (bad / MANIFEST).unlink()
    else:
        (bad / "model" / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="raymeta.train"):
        assert latest_checkpoint(tmp_path) == good
    named = {"truncate": "trainer_state.safetensors", "flip": "trainer_state.safetensors",
             "no_manifest": MANIFEST,
             "lose_file": "model.safetensors"}[damage]
    assert any("step-00000002" in r.getMessage() and named in r.getMessage()
               for r in caplog.records)


def test_no_complete_checkpoint_means_none(tmp_path, encoder, tokenizer):
    bad = save(tmp_path, 1, encoder, tokenizer)
    (bad / MANIFEST).write_text("{not json")
    assert latest_checkpoint(tmp_path) is None


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, encoder, tokenizer,
                                                                   monkeypatch):
    good = save(tmp_path, 1, encoder, tokenizer)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("raymeta.core.checkpoint.save_file", full)
    with pytest.raises(RaymetaError,
                       match=r"step-00000002: cannot be written \(No space left on device\); the "
                                           r"previous one, step-00000001, is intact"):
        save(tmp_path, 2, encoder, tokenizer)
    assert latest_checkpoint(tmp_path) == good and checkpoint_problem(good) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST",
                                                                            "step-00000001"]


def test_checkpoints_on_s3_count_only_with_their_manifest(s3, tmp_path, encoder, tokenizer, caplog):
    remote = storage.join(s3(), "run", "checkpoints")
    for step in (1, 2, 3):
        push_checkpoint(save(tmp_path / "a", step, encoder, tokenizer, keep_last=5), remote,
                        keep_last=2)
    # keep_last, after the new one
    assert sorted(storage.listing(remote)) == ["step-00000002", "step-00000003"]
    # an upload cut short: every file but the manifest (which goes last)
    cut = save(tmp_path / "a", 4, encoder, tokenizer, keep_last=5)
    storage.upload(cut, storage.join(remote, cut.name), skip=(MANIFEST,))
    with caplog.at_level(logging.WARNING, logger="raymeta.train"):
        got = pull_latest_checkpoint(remote, tmp_path / "pulled")
    assert got is not None and got.name == "step-00000003" and checkpoint_problem(got) is None
    assert any("step-00000004" in r.getMessage() and MANIFEST in r.getMessage()
               for r in caplog.records)
    # a damaged object (changed after the manifest was written) is passed over too
    storage.write_bytes(storage.join(remote, "step-00000003", "trainer_state.json"), b"{}")
    assert pull_latest_checkpoint(remote, tmp_path / "pulled2").name == "step-00000002"
    # a new checkpoint after step 2 on this timeline removes the others' later ones
    push_checkpoint(save(tmp_path / "b", 3, encoder, tokenizer), remote, keep_last=2)
    assert sorted(storage.listing(remote)) == ["step-00000002", "step-00000003"]


def test_a_really_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, encoder,
                                                                          tokenizer):
    """The same on a real file system that fills up: a 7 MiB tmpfs holds one tiny checkpoint (4.7
    MB), not two."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mount = shutil.which("mount")
    r = subprocess.run([mount, "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(small)],
                       capture_output=True, text=True) \
        if mount else None
    if r is None or r.returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here "
                    f"({r.stderr.strip() if r else 'no mount command'})")
    try:
        good = save(small, 1, encoder, tokenizer)
        with pytest.raises(RaymetaError,
                           match=r"step-00000002: cannot be written \(No space left on device\); "
                           r"the "
                                               r"previous one, step-00000001, is intact"):
            save(small, 2, encoder, tokenizer)
        assert latest_checkpoint(small) == good and checkpoint_problem(good) is None
        assert sorted(p.name for p in (small / "checkpoints").iterdir()) == ["LATEST",
                                                                             "step-00000001"]
    finally:
        subprocess.run(["umount", str(small)], check=False)
