"""Running an extractor over image files into a feature store: batched, resumable, atomic.

Unfinished work lives in ``partial_path(output)`` (``out.h5.partial/``), a folder of chunk stores, one per
batch, each published atomically: whatever an interrupted run finished is there, whole, and a restarted run
with the same output and extractor continues from it. When every image is done the chunks are merged into
``output`` (atomically) and the folder is removed.
"""
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import List, Sequence

from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreError, FeatureStoreWriter
from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.features.extractor import ImageFeatureExtractor
from vlp_mmt_fairseq.features.image_files import ImageFile, ImageFileError, load_rgb
from vlp_mmt_fairseq.file_utils import atomic_output, partial_path

CHUNK_PREFIX, CHUNK_SUFFIX = "chunk-", ".h5"


class ExtractionError(PluginError, ValueError):
    """An extraction run that cannot go on; the message names the file at fault."""


@dataclass
class ExtractionResult:
    """What a run did: images written in all, done by earlier runs, extracted now, and the images left out."""

    written: int
    resumed: int
    extracted: int
    bad: List[tuple] = field(default_factory=list)  # (path, reason)


class _ImageDataset:
    """Decodes and preprocesses one image per item (in DataLoader workers); errors travel as values."""

    def __init__(self, images: Sequence[ImageFile], extractor: ImageFeatureExtractor):
        self.images, self.extractor = list(images), extractor

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        try:
            rgb = load_rgb(image.path)
        except ImageFileError as e:
            return image, None, None, str(e)
        return image, self.extractor.preprocess(rgb), rgb.size, None


def _collate(items):
    return items


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def _chunks(folder: str) -> List[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith(CHUNK_PREFIX) and n.endswith(CHUNK_SUFFIX))


def _done_keys(folder: str, extractor: ImageFeatureExtractor) -> set:
    """The keys in the finished chunks of an earlier run, which must come from the same extractor."""
    done = set()
    for chunk in _chunks(folder):
        store = FeatureStore(chunk)
        if store.extractor != extractor.name or store.feature_dim != extractor.feature_dim:
            raise ExtractionError(
                f"{chunk}: this unfinished output was made by extractor '{store.extractor}' (D = {store.feature_dim}), "
                f"but this run uses '{extractor.name}' (D = {extractor.feature_dim}); delete {folder} to start again"
            )
        done.update(store.keys())
        store.close()
    return done


def _write_chunk(folder: str, number: int, extractor: ImageFeatureExtractor, items, dtype: str) -> None:
    """One batch's images as the chunk store ``chunk-<number>.h5`` (published atomically)."""
    if not items:
        return
    path = os.path.join(folder, f"{CHUNK_PREFIX}{number:08d}{CHUNK_SUFFIX}")
    with FeatureStoreWriter(path, feature_dim=extractor.feature_dim, extractor=extractor.name, dtype=dtype) as writer:
        for image, size, regions in items:
            writer.add(image.key, regions.features, regions.boxes, width=size[0], height=size[1],
                       scores=regions.scores, tags=regions.tags, tag_scores=regions.tag_scores)


def _merge(folder: str, output: str, extractor: ImageFeatureExtractor, keys: Sequence[str], dtype: str) -> int:
    """The chunks' images, in the order of ``keys``, as the store ``output`` (atomically)."""
    location = {}
    stores = [FeatureStore(chunk) for chunk in _chunks(folder)]
    for store in stores:
        for key in store.keys():
            location[key] = store
    with FeatureStoreWriter(output, feature_dim=extractor.feature_dim, extractor=extractor.name, dtype=dtype) as w:
        count = 0
        for key in keys:
            store = location.get(key)
            if store is None:
                continue
            item = store.get(key)  # every region and tag, best first
            w.add(key, item.features, item.boxes, width=item.width, height=item.height,
                  scores=_stored_scores(store, key), tags=item.tags, tag_scores=item.tag_scores)
            count += 1
    for store in stores:
        store.close()
    return count


def _stored_scores(store: FeatureStore, key: str):
    """The region scores of ``key``, in the order :meth:`FeatureStore.get` returns its regions (best first)."""
    import numpy as np

    handle = store._open()
    if "scores" not in handle[key]:
        return None
    return np.sort(np.asarray(handle[key]["scores"][()], dtype=np.float32))[::-1].copy()


def write_report(path: str, bad: Sequence[tuple]) -> None:
    """The images left out, one ``path<TAB>reason`` line each (atomically)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for image_path, reason in bad:
                f.write(f"{image_path}\t{reason}\n")


def extract_to_store(
    images: Sequence[ImageFile],
    output: str,
    extractor: ImageFeatureExtractor,
    batch_size: int = 16,
    num_workers: int = 0,
    skip_bad: bool = False,
    dtype: str = "float16",
    progress: bool = True,
) -> ExtractionResult:
    """Extract ``images`` into the store ``output``; see the module docstring for resuming.

    An image that cannot be read stops the run (after saving the finished ones) with an
    :class:`ExtractionError` naming it, unless ``skip_bad``: then it is left out and listed in the result.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not images:
        raise ExtractionError(f"{output}: no images to extract")
    folder = partial_path(output)
    os.makedirs(folder, exist_ok=True)
    done = _done_keys(folder, extractor)
    todo = [image for image in images if image.key not in done]
    resumed = len(images) - len(todo)
    if resumed:
        print(f"{folder}: continuing, {resumed} of {len(images)} images already done", file=sys.stderr)
    existing = _chunks(folder)
    number = int(os.path.basename(existing[-1])[len(CHUNK_PREFIX):-len(CHUNK_SUFFIX)]) if existing else 0
    bad, extracted = [], 0
    loader = DataLoader(_ImageDataset(todo, extractor), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, worker_init_fn=_worker_init if num_workers else None,
                        persistent_workers=False)
    bar = tqdm(total=len(images), initial=resumed, desc="extract", unit="img", disable=not progress)
    try:
        for batch in loader:
            good = [(image, tensor, size) for image, tensor, size, error in batch if error is None]
            items = []
            if good:
                regions = extractor.extract(torch.stack([t for _, t, _ in good]), [s for _, _, s in good])
                items = [(image, size, r) for (image, _, size), r in zip(good, regions)]
            number += 1
            _write_chunk(folder, number, extractor, items, dtype)
            extracted += len(items)
            bar.update(len(batch))
            for image, _, _, error in batch:
                if error is not None:
                    if not skip_bad:
                        raise ExtractionError(f"{error} (the {resumed + extracted} images done so far are kept in "
                                              f"{folder}; fix or remove the file, or pass --skip-bad, and rerun)")
                    bad.append((image.path, error))
    finally:
        bar.close()
    try:
        written = _merge(folder, output, extractor, [image.key for image in images], dtype)
    except FeatureStoreError as e:
        raise ExtractionError(f"{folder}: cannot merge the finished chunks ({e})") from e
    shutil.rmtree(folder)
    return ExtractionResult(written=written, resumed=resumed, extracted=extracted, bad=bad)
