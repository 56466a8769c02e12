"""A full disk while writing outputs: the previous complete file stays, no partial one is
left, and the error names the file and the free space (injected failures, and a real
size-capped tmpfs where the tests may mount one)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ccis.common import shards
from ccis.common.atomic import WriteFailed, atomic_dir, write_bytes_atomic
from ccis.common.checkpoints import complete_checkpoints, save_checkpoint

FULL = OSError(errno.ENOSPC, "No space left on device")


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_file_write_keeps_the_old_file_and_names_path_and_free_space(
    tmp_path, monkeypatch
):
    target = tmp_path / "image.png"
    target.write_bytes(b"old complete image")
    real = Path.write_bytes

    def half_then_full(self, data):
        real(self, data[: len(data) // 2])
        raise FULL

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(WriteFailed, match=rf"could not write {target}: No space left.*free"):
        write_bytes_atomic(target, b"new image bytes" * 100)
    assert target.read_bytes() == b"old complete image"
    assert _siblings(tmp_path) == ["image.png"]  # no temporary left


def test_a_failed_manifest_write_keeps_the_old_manifest_and_exits_4(tmp_path, monkeypatch):
    from ccis.cli import WRITE_FAILED_EXIT, main

    part = tmp_path / "part0.parquet"
    pd.DataFrame({"id": ["a", "b"]}).to_parquet(part)
    out = tmp_path / "out.parquet"
    pd.DataFrame({"id": ["old"]}).to_parquet(out)

    def partial_then_full(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("No space left on device (pyarrow's message has no errno)")

    monkeypatch.setattr(shards.pq, "write_table", partial_then_full)
    assert main(["gather", "--out", str(out), str(part)]) == WRITE_FAILED_EXIT
    assert pd.read_parquet(out)["id"].tolist() == ["old"]
    assert _siblings(tmp_path) == ["out.parquet", "part0.parquet"]


def test_a_failed_checkpoint_leaves_the_older_ones_whole(tmp_path):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights")

    save_checkpoint(tmp_path, 1, write)

    def write_until_full(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        # What torch.save raises when the disk fills.
        raise RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0")

    with pytest.raises(WriteFailed, match=r"could not write checkpoint .*checkpoint-2: .*free"):
        save_checkpoint(tmp_path, 2, write_until_full)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1]
    assert _siblings(tmp_path) == ["checkpoint-1"]
    assert (tmp_path / "checkpoint-1" / "model.safetensors").read_bytes() == b"weights"


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    (tmp_path / "split" / "images").mkdir(parents=True)
    (tmp_path / "split" / "images" / "a.png").write_bytes(b"old")
    with (
        pytest.raises(WriteFailed, match="could not write .*split"),
        atomic_dir(tmp_path / "split") as tmp,
    ):
        (tmp / "b.png").write_bytes(b"new")
        raise FULL
    assert _siblings(tmp_path) == ["split"]
    assert (tmp_path / "split" / "images" / "a.png").read_bytes() == b"old"


def test_other_errors_in_a_write_are_not_reported_as_a_full_disk(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_dir(tmp_path / "split"):
        (tmp_path / "missing-input.png").read_bytes()  # reading an input, not writing
    with pytest.raises(ValueError), atomic_dir(tmp_path / "split"):
        raise ValueError("bad input")
    assert _siblings(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and a kernel that lets us mount; skipped otherwise)."""
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk(small_tmpfs):
    target = small_tmpfs / "synthetic.png"
    write_bytes_atomic(target, b"x" * 1000)
    with pytest.raises(WriteFailed, match=r"No space left on device \(.* KiB free"):
        write_bytes_atomic(target, os.urandom(400 * 1024))
    assert target.read_bytes() == b"x" * 1000
    assert _siblings(small_tmpfs) == ["synthetic.png"]


_EDITED_CONFIG = """results: results
data:
  phantom: {seed: 3, width: 96, height: 80}
  splits:
    - {name: train, role: train, sources: [{format: kvasir-seg, root: kvasir}]}
    - {name: centre1, role: test, phantom: {count: 2, centre: 1}}
    - {name: etis, role: test, sources: [{format: kvasir-seg, root: other}]}
caption: {shards: 1}
resources: {prepare_threads: 1}
"""


def _planned(workdir: Path, targets: list[str]) -> list[str]:
    """The rules (with their split) a dry run would run, sorted."""
    import re

    from conftest import snakemake

    log = snakemake(workdir, "-n", *targets).stdout
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: (.*)", log, re.M)
    names = re.findall(r"^rule (\w+):", log, re.M)
    assert len(jobs) == len(names) or not jobs, log
    return sorted(f"{rule} {wildcards}" for rule, wildcards in jobs)


def test_an_edited_data_set_reruns_prepare_of_its_split_and_downstream_only(tmp_path):
    """The folder listing (names, sizes, mtimes) is a param of prepare: editing one mask,
    adding or removing a file re-runs that split and its captions, nothing else."""
    from conftest import disc_mask, save, snakemake, write_pairs

    write_pairs(tmp_path / "kvasir" / "images", tmp_path / "kvasir" / "masks", ["a", "b", "c"])
    write_pairs(tmp_path / "other" / "images", tmp_path / "other" / "masks", ["x", "y"])
    (tmp_path / "config.yaml").write_text(_EDITED_CONFIG)
    targets = ["results/data/train.parquet", "results/data/centre1.parquet",
               "results/data/etis.parquet", "results/captions/train.parquet"]  # fmt: skip
    snakemake(tmp_path, "--cores", "2", *targets)
    assert _planned(tmp_path, targets) == []

    mask = tmp_path / "kvasir" / "masks" / "b.png"
    before = mask.stat()
    save(mask, disc_mask(cx=30))  # one mask redrawn
    os.utime(mask, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    downstream = [
        "caption split=train, shard=0",
        "gather_captions split=train",
        "prepare split=train",
    ]
    assert _planned(tmp_path, targets) == downstream
    (tmp_path / "other" / "images" / "y.png").unlink()  # a pair removed from a test set
    (tmp_path / "other" / "masks" / "y.png").unlink()
    assert _planned(tmp_path, targets) == sorted([*downstream, "prepare split=etis"])


def test_listing_fingerprint_follows_names_sizes_and_mtimes(tmp_path):
    """What prepare's and caption's params hold: any edit, addition or removal changes it."""
    from ccis.data.listing import listing_fingerprint

    folder, model = tmp_path / "kvasir", tmp_path / "model.gguf"
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "a.png").write_bytes(b"mask")
    model.write_bytes(b"weights")
    seen = {listing_fingerprint([folder, model])}
    stat = model.stat()
    model.write_bytes(b"other!!")  # same size: the mtime tells
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    seen.add(listing_fingerprint([folder, model]))
    (folder / "masks" / "b.png").write_bytes(b"new")
    seen.add(listing_fingerprint([folder, model]))
    (folder / "masks" / "a.png").unlink()
    seen.add(listing_fingerprint([folder, model]))
    assert len(seen) == 4
    assert listing_fingerprint([folder, model]) == listing_fingerprint([folder, model])
    assert listing_fingerprint([tmp_path / "missing"]) != listing_fingerprint([])


def test_a_repeated_stop_signal_neither_kills_nor_changes_the_request():
    """SLURM plus a launcher often deliver one stop twice: the second must not kill the
    process while it writes its checkpoint. Handlers are put back afterwards."""
    import signal

    from ccis.common.preemption import stop_requests

    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signal_name == "SIGTERM" and stop.agreed()
    assert signal.getsignal(signal.SIGTERM) is before
