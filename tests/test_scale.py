"""Scale past one machine: two torchrun "nodes" over loopback, WebDataset shards, splitting inputs across ranks,
and out-of-memory errors that say what to lower."""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image

from palette.cli import main
from palette.config import config_from_dict
from palette.data import training_loader
from palette.imageio import ImageError
from palette.shards import Shard, ShardStream, rank_slice, resolve_shards, shard_key, write_shards
from palette.training import train

from conftest import tiny_values, write_images
from test_crash_safety import ENV, TORCHRUN, assert_same_run, config_file, free_port, launch, train_command


def test_rank_slice_is_deterministic_disjoint_covering_and_balanced():
    assert [rank_slice(list(range(10)), rank, 3) for rank in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert [rank_slice("abc", rank, 5) for rank in range(5)] == [[], ["a"], [], ["b"], ["c"]]
    for count in (0, 1, 7, 64, 1001):
        items = [f"image{index}.png" for index in range(count)]
        for world in (1, 2, 3, 8, 13):
            parts = [rank_slice(items, rank, world) for rank in range(world)]
            assert sum(parts, []) == items  # disjoint and covering, in order
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert parts == [rank_slice(tuple(items), rank, world) for rank in range(world)]
    for rank, world in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="expected 0 <= rank < world_size"):
            rank_slice([1, 2], rank, world)


@pytest.fixture
def shard_folder(tmp_path: Path, capsys) -> Path:
    """8 images written by `palette data shard` as 4 shards of 2, one in a subfolder with a dot in its name."""
    write_images(tmp_path / "images", count=7, size=24)
    (tmp_path / "images" / "sub").mkdir()
    Image.new("RGB", (20, 28), (200, 40, 90)).save(tmp_path / "images" / "sub" / "red.v2.jpg")
    main(["data", "shard", "--input", str(tmp_path / "images"), "--output", str(tmp_path / "shards"),
          "--shard-size", "2", "--seed", "3"])
    assert capsys.readouterr().out == f"wrote 4 shard(s) to {tmp_path / 'shards'}\n"
    assert sorted(path.name for path in (tmp_path / "shards").iterdir()) == [f"shard-00000{n}.tar" for n in range(4)]
    return tmp_path / "shards"


def test_shards_hold_each_image_once_as_its_file_bytes_and_webdataset_reads_them(shard_folder, tmp_path):
    images = tmp_path / "images"
    originals = {shard_key(p.relative_to(images)): p.read_bytes() for p in images.rglob("*.*")}
    assert "sub/red_v2" in originals
    samples = list(webdataset.WebDataset(sorted(map(str, shard_folder.glob("*.tar"))), shardshuffle=False,
                                         nodesplitter=None, workersplitter=None))
    stored = {sample["__key__"]: sample.get("png", sample.get("jpg")) for sample in samples}
    assert stored == originals and len(samples) == 8
    assert [sample["__key__"] for sample in samples] != sorted(originals)  # shuffled while written
    assert [len(Shard(str(path))) for path in sorted(shard_folder.glob("*.tar"))] == [2, 2, 2, 2]
    # The same images and seed give the same bytes; a folder that holds shards is not written into.
    again = write_shards(images, tmp_path / "again", shard_size=2, seed=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in sorted(shard_folder.glob("*.tar"))]
    with pytest.raises(ValueError, match="already holds .tar shards"):
        write_shards(images, shard_folder, shard_size=2)


def test_shard_sources_resolve_and_are_refused_with_reasons(shard_folder, tmp_path):
    names = [str(shard_folder / f"shard-00000{n}.tar") for n in range(4)]
    assert resolve_shards(shard_folder) == names
    assert resolve_shards(shard_folder / "shard-{000000..000003}.tar") == names
    assert resolve_shards(names[2]) == [names[2]]
    with pytest.raises(ImageError, match=r"shard-000004.tar: no such shard \(1 of the 5"):
        resolve_shards(shard_folder / "shard-{000000..000004}.tar")
    Image.new("RGB", (8, 8)).save(shard_folder / "stray.png")
    with pytest.raises(ImageError, match=r"shards: holds both 4 .tar file\(s\), first shard-000000.tar, and 1 "
                                         r"image\(s\) below it, first stray.png; point data.source at a folder of one"):
        resolve_shards(shard_folder)
    config = config_from_dict(tiny_values(shard_folder / "shard-{000000..000003}.tar"))
    with pytest.raises(ImageError, match=r"4 shard\(s\) cannot give each of 2 rank\(s\) x 3 loader worker"):
        ShardStream(replace(config.data, num_workers=3), 0, 0, 2, rank=0, world_size=2)


def test_a_stray_tar_does_not_take_over_a_folder_of_photos_in_subfolders(tmp_path):
    write_images(tmp_path / "ph" / "2023", count=2, size=24)
    write_shards(tmp_path / "ph" / "2023", tmp_path / "backup")[0].rename(tmp_path / "ph" / "backup.tar")
    with pytest.raises(ImageError, match=r"ph: holds both 1 .tar file\(s\), first backup.tar, and 2 image\(s\) "
                                         r"below it, first 2023/image0.png; point data.source at a folder of one kind"):
        training_loader(config_from_dict(tiny_values(tmp_path / "ph")).data, 0, 0, 2)
    (tmp_path / "ph" / "backup.tar").unlink()
    assert training_loader(config_from_dict(tiny_values(tmp_path / "ph")).data, 0, 0, 2)[1] == "2 images"


def test_shard_writing_refuses_an_output_that_is_or_lies_inside_its_input(tmp_path, capsys):
    write_images(tmp_path / "in", count=2, size=24)
    inside = tmp_path / "in" / "shards"
    for output, message in ((tmp_path / "in", "is the input folder: the outputs would mix with the inputs. Choose "
                                              "another --output"),
                            (inside, f"lies inside the input folder {tmp_path / 'in'} (its shards would mix with the "
                                     f"images); choose an --output outside it")):
        with pytest.raises(SystemExit) as stopped:
            main(["data", "shard", "--input", str(tmp_path / "in"), "--output", str(output)])
        assert stopped.value.code == 2 and capsys.readouterr().err == f"palette data: error: {output}: {message}\n"
    assert sorted(path.name for path in (tmp_path / "in").rglob("*")) == ["image0.png", "image1.png"]


def test_a_shard_cut_short_trains_on_the_samples_before_the_cut_and_resumes_exactly(shard_folder):
    path = shard_folder / "shard-000001.tar"
    whole, data = np.asarray(Shard(str(path)).image(0)), path.read_bytes()
    with tarfile.open(path) as archive:
        second = archive.getmembers()[1]
    path.write_bytes(data[:second.offset_data + 10])  # a copy that stopped inside the second image
    with pytest.warns(UserWarning, match=r"shard-000001.tar: cut short or corrupt after its first 2 sample\(s\); "
                                         r"skipping the rest of the shard"):
        shard = Shard(str(path))
    assert len(shard) == 2 and np.array_equal(np.asarray(shard.image(0)), whole)
    with pytest.warns(UserWarning, match=r"000001.tar:\S+: unreadable \(unexpected end of data\); using the next"):
        assert np.array_equal(np.asarray(shard.image(1)), whole)
    path.write_bytes(data[:second.offset])  # cut at a header: tarfile's own walk stops there without a word
    with pytest.warns(UserWarning, match=r"shard-000001.tar: cut short or corrupt after its first 1 sample\(s\)"):
        assert len(Shard(str(path))) == 1
    config = config_from_dict(tiny_values(shard_folder)).data
    with pytest.warns(UserWarning, match="cut short"):
        batches = iter(training_loader(config, 0, 0, 2)[0])
        expected = [next(batches) for _ in range(9)][5:]  # past the end of the 7 readable images
        batches = iter(training_loader(config, 0, 5, 2)[0])
        assert all(all(torch.equal(got[key], wanted[key]) for key in wanted) for got, wanted in zip(batches, expected))
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"^\S+shard-000001.tar: not a readable .tar shard \(empty, cut short or not"):
        next(iter(training_loader(config, 0, 0, 2)[0]))


def test_each_rank_and_worker_reads_shards_of_its_own(shard_folder, monkeypatch):
    read: set[str] = set()
    image = Shard.image
    monkeypatch.setattr(Shard, "image", lambda self, index: read.add(self.path) or image(self, index))
    names = [str(shard_folder / f"shard-00000{n}.tar") for n in range(4)]
    config = config_from_dict(tiny_values(shard_folder)).data
    for workers, expected in ((0, [names[:2], names[2:]]), (2, [[name] for name in names])):
        shards_of = []
        for rank in range(2):  # two simulated ranks of one run
            stream = ShardStream(replace(config, num_workers=workers), 0, 0, 2, rank, 2)
            for reader in range(stream.readers):  # each of the rank's loader workers
                read.clear()
                examples = stream.stream(reader, 0)
                assert all(next(examples)["target"].shape == (3, 16, 16) for _ in range(12))  # a few epochs
                shards_of.append(sorted(read))
        assert shards_of == expected  # disjoint, covering, and the same on every call


def test_a_loader_started_at_step_s_yields_what_one_started_at_0_yields_from_batch_s(shard_folder):
    config = config_from_dict(tiny_values(shard_folder)).data
    for workers in (0, 2):
        data = replace(config, num_workers=workers)
        whole, _ = training_loader(data, 0, 0, 2, rank=1, world_size=2)
        later, _ = training_loader(data, 0, 3, 2, rank=1, world_size=2)
        batches = iter(whole)
        expected = [next(batches) for _ in range(8)][3:]
        batches = iter(later)
        for wanted in expected:
            got = next(batches)
            assert all(torch.equal(got[key], wanted[key]) for key in wanted)


def test_training_from_shards_runs_and_resumes_exactly(shard_folder, tmp_path):
    config = config_from_dict(tiny_values(shard_folder / "shard-{000000..000003}.tar", steps=3))
    result = train(config, tmp_path / "run", progress=False)
    assert result.checkpoint.name == "step_00000003" and (tmp_path / "run" / "samples" / "step_00000003.png").is_file()
    longer = replace(config, train=replace(config.train, steps=8, batch_size=3))
    train(longer, tmp_path / "whole", progress=False)
    train(replace(longer, train=replace(longer.train, steps=5)), tmp_path / "split", progress=False)
    # From step 5: sample 15 of the stream, in its second pass over the 8 images, inside a shard.
    train(longer, tmp_path / "split", resume=True, progress=False)
    assert_same_run(tmp_path / "split", tmp_path / "whole")


def test_a_broken_sample_is_skipped_for_the_next_image_of_its_shard(tmp_path):
    write_images(tmp_path / "images", count=2, size=24)
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "mixed.tar", "w") as archive:
        for name, data in (("a.png", b"not an image"), ("b.png", (tmp_path / "images" / "image1.png").read_bytes())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    shard = Shard(str(tmp_path / "shards" / "mixed.tar"))
    with pytest.warns(UserWarning, match=r"mixed.tar:a: not a readable image.*next image of the shard"):
        first = shard.image(0)
    assert np.array_equal(np.asarray(first), np.asarray(shard.image(1)))


def test_out_of_memory_in_training_is_one_line_naming_what_to_lower(image_folder, tmp_path, monkeypatch, capsys):
    config = config_file(tmp_path, image_folder, steps=2)

    def raising(error: Exception):
        def step(*args, **kwargs):
            raise error
        return step

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    monkeypatch.setattr("palette.training.optimization_step", raising(oom))
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert stopped.value.code == 2
    errors = capsys.readouterr().err
    *progress_bar, line = errors.splitlines()  # tqdm's bar goes to stderr too
    assert "Traceback" not in errors and all("error" not in bar for bar in progress_bar)
    assert line.startswith("palette train: error: out of memory on cpu at step 1 with train.batch_size=4 per process, "
                           "data.image_size=16, network.preset=tiny, network.gradient_checkpointing=false: lower "
                           "train.batch_size, data.image_size or set network.gradient_checkpointing=true")
    # Any device's wording counts; other errors pass through untouched.
    monkeypatch.setattr("palette.training.optimization_step",
                        raising(RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)")))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--overwrite"])
    assert "lower train.batch_size" in capsys.readouterr().err
    monkeypatch.setattr("palette.training.optimization_step",
                        raising(RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--overwrite"])


def test_two_nodes_over_loopback_train_like_one_node_with_two_processes(image_folder, tmp_path):
    config = config_file(tmp_path, image_folder, steps=3, batch_size=2, checkpoint_every=2)
    single = tmp_path / "single"
    one_node = TORCHRUN + ["--nproc_per_node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    assert launch(train_command(single, config, one_node), tmp_path / "single.log").wait(timeout=300) == 0
    port, run = free_port(), tmp_path / "run"
    node = TORCHRUN + ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                       "--rdzv-id=palette-test", "--local-addr=127.0.0.1"]
    nodes = [subprocess.Popen(train_command(run, config, node), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=ENV, cwd=tmp_path) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0].decode() for process in nodes]
    assert [process.returncode for process in nodes] == [0, 0], outputs
    assert sum("world size 2" in output for output in outputs) == 1  # rank 0 reports, on one of the nodes
    assert_same_run(run, single)
