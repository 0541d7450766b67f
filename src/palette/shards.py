"""WebDataset tar shards: written from an image folder, streamed to training with each rank and loader worker
reading shards of its own, and `rank_slice`, the one rule that splits any list across ranks.

    palette data shard --input photos/ --output shards/ --shard-size 1000
    palette train --config configs/multitask.yaml --set "data.source=shards/shard-{000000..000041}.tar"

A shard holds one sample per image: the file's bytes as they are, named `<key>.<suffix>` (`holiday/beach.jpg`),
so `webdataset.WebDataset` and `tar` read them too. `data.source` names shards as one `.tar` file, a brace pattern
or a folder of `.tar` files (local or mounted paths: the reader seeks inside them).

Determinism: rank r reads `rank_slice(shards, r, world_size)`, which its loader workers split again the same way.
Each reader walks its shards in an order drawn per epoch from (seed, rank, reader, epoch), and its k-th example
(crop, task, degradation) comes from (seed, rank, reader, k). The batches of step s are therefore a pure function
of (seed, s, world size, data.num_workers, the shard list): a resumed run repeats the uninterrupted one exactly
when the world size and worker count are unchanged, and draws a valid but different stream when they change.
Samples are not shuffled within a shard at read time; `palette data shard` shuffles the images as it writes.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from .config import DataConfig
from .files import write_atomic
from .imageio import (IMAGE_SUFFIXES, WHITE, ImageError, _eight_bit, _flatten, _open, _too_large, list_images,
                      max_pixels, refuse_input_as_output)

Item = TypeVar("Item")

IMAGE_FIELDS = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES)  # sample fields that hold an encoded image
SHARD_NAME = "shard-{:06d}.tar"
ORDER_STREAM, EXAMPLE_STREAM = 1, 2  # keep the shard-order and example random streams apart


def rank_slice(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Rank `rank`'s share of `items`: a contiguous block, in order.

    The blocks of ranks 0 .. world_size - 1 are disjoint, together are `items`, and differ in length by at most
    one; the split depends on nothing but (len(items), rank, world_size).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world_size")
    count = len(items)
    return list(items[rank * count // world_size:(rank + 1) * count // world_size])


def is_shard_source(source: str | Path) -> bool:
    """Whether `data.source` names shards: a `.tar` file or brace pattern, or a folder holding `.tar` files."""
    path = Path(source)
    return str(source).endswith(".tar") or (str(source) != "" and path.is_dir() and any(path.glob("*.tar")))


def resolve_shards(source: str | Path) -> list[str]:
    """The shard files `source` names, in order; a missing shard is an error, and so is a folder with images anywhere
    below it (a stray backup.tar beside a photo folder must not replace the photos)."""
    from braceexpand import braceexpand

    path = Path(source)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        images = list_images(path)
        if shards and images:
            raise ImageError(f"{path}: holds both {len(shards)} .tar file(s), first {Path(shards[0]).name}, and "
                             f"{len(images)} image(s) below it, first {images[0].relative_to(path).as_posix()}; "
                             f"point data.source at a folder of one kind")
    else:
        shards = list(braceexpand(str(source)))
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        raise ImageError(f"{missing[0]}: no such shard ({len(missing)} of the {len(shards)} named by {source})")
    if not shards:
        raise ImageError(f"{source}: no .tar shards")
    return shards


def shard_key(relative: Path) -> str:
    """The WebDataset key of an image: its path below the input folder without suffix, dots in its name as `_`.

    WebDataset splits a file name at its first dot (`a.b.jpg` is key `a`, field `b.jpg`), so the name keeps none.
    """
    stem = relative.with_suffix("")
    return (stem.parent / stem.name.replace(".", "_")).as_posix()


def write_shards(input_folder: str | Path, output: str | Path, shard_size: int = 1000, seed: int = 0) -> list[Path]:
    """Write the images under `input_folder` as `shard-000000.tar`, ... of `shard_size` images each, shuffled.

    Images that do not decode are skipped with a warning (as training skips them); the rest go in as their bytes.
    Each shard is written atomically, and the same images and seed give the same bytes. An output folder that is
    the input folder or lies inside it is refused before anything is written.
    """
    import webdataset

    from .data import usable_images

    if shard_size < 1:
        raise ValueError(f"--shard-size: must be >= 1, got {shard_size}")
    folder, output = Path(input_folder), Path(output)
    refuse_input_as_output(folder, output)
    if folder.resolve() in output.resolve().parents:
        raise ImageError(f"{output}: lies inside the input folder {folder} (its shards would mix with the images); "
                         f"choose an --output outside it")
    if output.is_dir() and any(output.glob("*.tar")):
        raise ValueError(f"{output}: already holds .tar shards; write to an empty folder")
    paths = usable_images(list_images(folder), folder)
    owners: dict[str, Path] = {}
    for path in paths:
        key = shard_key(path.relative_to(folder))
        if key in owners:
            raise ImageError(f"{owners[key]} and {path} would both get the shard key {key!r}; rename one")
        owners[key] = path
    keys = list(owners)
    # Training reads each shard in order, so the mixing happens here.
    order = np.random.default_rng(seed).permutation(len(keys))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for number, first in enumerate(range(0, len(order), shard_size)):
        chosen = [keys[index] for index in order[first:first + shard_size]]

        def write(temporary: Path, chosen: list[str] = chosen) -> None:
            with open(temporary, "wb") as stream, \
                    webdataset.TarWriter(stream, encoder=False, mode=0o644, mtime=0.0) as sink:
                for key in chosen:
                    sink.write({"__key__": key, owners[key].suffix.lower()[1:]: owners[key].read_bytes()})

        target = output / SHARD_NAME.format(number)
        write_atomic(target, write)
        written.append(target)
    return written


class _NamedBytes(io.BytesIO):
    """In-memory file bytes that print as `shard:key`, so decoding errors name the sample."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


def decode_image(data: bytes, name: str) -> Image.Image:
    """RGB image from encoded bytes, decoded as `imageio.open_image` decodes a file; ImageError names `name`."""
    limit = max_pixels()
    try:
        with _open(_NamedBytes(data, name), limit) as image:
            if image.width * image.height > limit:
                raise _too_large(name, limit, image.width * image.height)
            image.load()
            return _flatten(_eight_bit(ImageOps.exif_transpose(image)), WHITE).convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError(f"{name}: not a readable image (Pillow recognises no image format in it)") from error
    except Exception as error:  # Pillow raises many types for broken bytes
        raise ImageError(f"{name}: not a readable image ({type(error).__name__}: {error})") from error


class Shard:
    """One open shard, indexed from its tar headers alone: sample j is (key, the member holding its image)."""

    def __init__(self, path: str):
        from webdataset.tariterators import base_plus_ext  # the key rule WebDataset itself reads shards with

        self.path = path
        try:
            self.archive = tarfile.open(path)  # random access: the index seeks past member data
        except tarfile.TarError as error:
            raise ImageError(f"{path}: not a readable .tar shard (empty, cut short or not a tar file)") from error
        self.samples: list[tuple[str, tarfile.TarInfo | None]] = []
        try:
            for member in self.archive:
                key, field = base_plus_ext(member.name)
                if not member.isreg() or key is None:
                    continue
                if not self.samples or self.samples[-1][0] != key:
                    self.samples.append((key, None))
                if field.lower() in IMAGE_FIELDS and self.samples[-1][1] is None:
                    self.samples[-1] = (key, member)
            # tarfile ends its walk quietly at a header cut short or corrupt; a whole archive ends in a zero block.
            self.archive.fileobj.seek(self.archive.offset)
            ended = self.archive.fileobj.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)
        except tarfile.TarError:  # the last member's bytes run past the end of the file
            ended = False
        if not ended:  # a copy cut short: the samples before the damage still train
            warnings.warn(f"{path}: cut short or corrupt after its first {len(self.samples)} sample(s); skipping the "
                          f"rest of the shard", stacklevel=2)

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, index: int) -> Image.Image:
        key, member = self.samples[index]
        if member is None:
            raise ImageError(f"{self.path}:{key}: sample holds no image (fields named {', '.join(IMAGE_FIELDS)})")
        try:
            data = self.archive.extractfile(member).read()
        except tarfile.TarError as error:  # the member's bytes run past the end of a shard cut short
            raise ImageError(f"{self.path}:{key}: unreadable ({error})") from error
        return decode_image(data, f"{self.path}:{key}")

    def image(self, index: int) -> Image.Image:
        """Sample `index`'s image; one that does not decode is skipped with a warning for the shard's next one."""
        for offset in range(len(self)):
            try:
                return self.decode((index + offset) % len(self))
            except ImageError as error:
                if offset == 0:
                    warnings.warn(f"skipping {error}; using the next image of the shard", stacklevel=2)
        raise ImageError(f"{self.path}: none of its {len(self)} samples holds a readable image")

    def close(self) -> None:
        self.archive.close()


def first_images(shards: list[str], count: int) -> list[Image.Image]:
    """The first `count` images of the shards in order (the preview grid's examples)."""
    images: list[Image.Image] = []
    for path in shards:
        shard = Shard(path)
        images += [shard.image(index) for index in range(min(len(shard), count - len(images)))]
        shard.close()
        if len(images) == count:
            break
    return images


class ShardStream(IterableDataset):
    """Endless training examples of one rank from optimizer step `start_step` on (see the module docstring).

    DataLoader takes batches from its workers in turn, so a rank's batch b comes from reader b % readers. A loader
    that starts at step s gives its worker w reader (s + w) % readers, starting after the batches that reader made
    before step s: it yields exactly what a loader started at step 0 yields from its batch s on.
    """

    def __init__(self, config: DataConfig, seed: int, start_step: int, batch_size: int, rank: int = 0,
                 world_size: int = 1):
        from .data import Examples

        self.shards = resolve_shards(config.source)
        self.readers = max(1, config.num_workers)  # DataLoader's workers, or the main process alone
        if len(self.shards) < world_size * self.readers:
            raise ImageError(f"{config.source}: {len(self.shards)} shard(s) cannot give each of {world_size} rank(s) "
                             f"x {self.readers} loader worker(s) a shard of its own; write smaller shards "
                             f"(palette data shard --shard-size) or lower data.num_workers")
        self.rank_shards = rank_slice(self.shards, rank, world_size)
        self.examples = Examples(config)
        self.seed, self.start_step, self.batch_size, self.rank = seed, start_step, batch_size, rank

    def reader_shards(self, reader: int) -> list[str]:
        return rank_slice(self.rank_shards, reader, self.readers)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        reader = (self.start_step + (info.id if info is not None else 0)) % self.readers
        made = (self.start_step - reader + self.readers - 1) // self.readers  # batches b < start, b % readers == reader
        return self.stream(reader, made * self.batch_size)

    def stream(self, reader: int, position: int) -> Iterator[dict]:
        """Reader `reader`'s examples from its `position`-th on."""
        paths = self.reader_shards(reader)
        counts = []
        for path in paths:
            shard = Shard(path)
            counts.append(len(shard))
            shard.close()
        total = sum(counts)
        if total == 0:
            raise ImageError(f"{', '.join(paths)}: no samples in the shard(s) of rank {self.rank}, reader {reader}")
        epoch, skip = divmod(position, total)
        while True:
            order = np.random.default_rng([self.seed, self.rank, reader, epoch, ORDER_STREAM]).permutation(len(paths))
            for index in order:
                if skip >= counts[index]:
                    skip -= counts[index]
                    continue
                shard = Shard(paths[index])
                try:
                    for sample in range(skip, counts[index]):
                        rng = np.random.default_rng([self.seed, self.rank, reader, position, EXAMPLE_STREAM])
                        yield self.examples(shard.image(sample), rng)
                        position += 1
                finally:  # also when the loader stops mid-shard
                    shard.close()
                skip = 0
            epoch += 1
