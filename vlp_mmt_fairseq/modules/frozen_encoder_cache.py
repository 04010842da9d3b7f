"""Frozen-encoder cache (``--cache-frozen-encoder``): BERT's output per sentence, computed once in stage 1.

In stage 1 BERT is frozen and runs without dropout. When nothing before BERT trains either (no
images, or FFN(v) frozen because it came from ``--load-vlp``), BERT's output for a sentence and its
image never changes, so it is computed in the first epoch and reused in the later ones. What is
cached is what :meth:`MultimodalBertEncoder.forward_bert` returns, before the trainable projection.

An entry is keyed by a hash of everything BERT reads for one sentence (the WordPieces of x and t, the
kept regions and boxes), so it does not depend on the batch, the split or the epoch. The entries
live in memory up to ``--cache-frozen-encoder-mem-mb``; the least recently used ones beyond that
spill to ``--cache-frozen-encoder-dir`` (one ``.npy`` file each, written atomically). Without a
directory, a temporary one is used and removed at exit. A given directory receives every entry as
it is computed and keeps them across runs, in a sub-directory named after a hash of the frozen
weights, so a restarted run reuses them and another model never sees them. The cache is used in
training only (validation and generation run BERT as usual), and each training batch logs its hit
rate as ``encoder_cache_hit``.
"""
import hashlib
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from typing import List, Optional

import numpy as np
import torch
from fairseq.logging import metrics

from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_output


class FrozenEncoderCacheError(PluginError, ValueError):
    """The cache would return stale outputs for this model; the message says what trains."""


def _row_bytes(tensor: Optional[torch.Tensor], row: int, keep: Optional[torch.Tensor] = None) -> bytes:
    if tensor is None or tensor.numel() == 0:
        return b""
    values = tensor[row] if keep is None else tensor[row][keep]
    return values.contiguous().view(torch.uint8).numpy().tobytes()  # raw bytes: any dtype, bf16 too


def sentence_keys(src_tokens, tag_tokens, region_features, region_boxes, region_mask, pad: int) -> List[str]:
    """One key per batch row: a hash of the row's BERT input, independent of padding and batch."""
    src_tokens, tag_tokens, region_features, region_boxes, region_mask = (
        None if t is None else t.detach().cpu()
        for t in (src_tokens, tag_tokens, region_features, region_boxes, region_mask)
    )
    keys = []
    for row in range(src_tokens.size(0)):
        digest = hashlib.blake2b(digest_size=20)
        digest.update(_row_bytes(src_tokens, row, src_tokens[row].ne(pad)))
        digest.update(b"|t|" + _row_bytes(tag_tokens, row, None if tag_tokens is None else tag_tokens[row].ne(pad)))
        if region_features is not None and region_features.size(1) > 0:
            digest.update(b"|v|" + str(region_features.dtype).encode())
            digest.update(_row_bytes(region_features, row, region_mask[row]))
            digest.update(b"|b|" + _row_bytes(region_boxes, row, region_mask[row]))
        keys.append(digest.hexdigest())
    return keys


def weights_fingerprint(*modules) -> str:
    """A hash of the modules' weights (names, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=12)
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FrozenEncoderCache:
    """An LRU of per-sentence BERT outputs, bounded in memory, spilling to a directory.

    Args:
        mem_mb: memory for the entries, in MB (0: every entry goes to disk)
        directory: where entries spill; ``None`` for a temporary directory removed at exit
    """

    def __init__(self, mem_mb: float = 2048, directory: Optional[str] = None):
        self.mem_bytes = int(mem_mb * 2 ** 20)
        self.root = directory
        self._dir = None  # the directory in use, made on the first spill
        self._memory = OrderedDict()  # key -> tensor [positions, hidden], most recent last
        self._used = 0
        self._on_disk = set()
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ the encoder's entry point

    def forward_bert(self, encoder, src_tokens, tag_tokens=None, region_features=None, region_boxes=None,
                     region_mask=None):
        """``encoder.forward_bert``'s result, with BERT run only on the rows not cached yet."""
        has_regions = encoder.visual is not None and region_features is not None and region_features.size(1) > 0
        self.check(encoder, has_regions)
        if self.root is not None and self._dir is None:
            # FFN(v) shapes BERT's output only when regions enter BERT (not with --region-fusion decoder)
            visual = encoder.visual if has_regions else None
            self._dir = os.path.join(self.root, weights_fingerprint(encoder.bert, visual))
            region_embedding = getattr(encoder, "region_embedding", "none")
            if has_regions and region_embedding != "none":  # the same weights give other outputs
                self._dir += "-" + region_embedding
        with torch.no_grad():
            x, keep, kinds = encoder.embed(src_tokens, tag_tokens, region_features, region_boxes, region_mask)
            keys = sentence_keys(src_tokens, tag_tokens, region_features, region_boxes, region_mask,
                                 encoder.dictionary.pad())
            cached = [self.get(key) for key in keys]
            missing = [row for row, entry in enumerate(cached) if entry is None]
            bsz = len(keys)
            self.hits += bsz - len(missing)
            self.misses += len(missing)
            metrics.log_scalar("encoder_cache_hit", (bsz - len(missing)) / bsz, bsz, round=3)
            if len(missing) == bsz:  # nothing cached: exactly the uncached computation
                hidden = encoder.run_bert(x, keep)
            else:
                hidden = x.new_zeros(x.shape)
                if missing:
                    hidden[missing] = encoder.run_bert(x[missing], keep[missing])
                for row, entry in enumerate(cached):
                    if entry is not None:
                        if entry.size(0) != int(keep[row].sum()):
                            raise FrozenEncoderCacheError(
                                f"cache entry {keys[row]} has {entry.size(0)} positions, the sentence "
                                f"{int(keep[row].sum())}: the cache directory belongs to another setup")
                        hidden[row, keep[row]] = entry.to(hidden.device, hidden.dtype)
            for row in missing:
                self.put(keys[row], hidden[row, keep[row]])
        return hidden, keep, kinds

    @staticmethod
    def check(encoder, has_regions: bool) -> None:
        """Refuse when BERT's output could change during training."""
        if not encoder.frozen:
            raise FrozenEncoderCacheError("--cache-frozen-encoder needs --freeze-bert (stage 1): BERT trains here")
        if encoder.frozen_dropout:
            raise FrozenEncoderCacheError("--cache-frozen-encoder cannot be combined with --frozen-bert-dropout: "
                                          "BERT's output changes with every dropout mask")
        if has_regions and not encoder.visual_frozen:
            raise FrozenEncoderCacheError(
                "--cache-frozen-encoder: FFN(v) trains before BERT, so BERT's output changes; freeze a pre-trained "
                "FFN(v) (--load-vlp with --no-train-visual-projection), put the regions after BERT (--region-fusion "
                "decoder), or train without images (--no-images) or regions (--no-regions)")
        if has_regions and getattr(encoder, "region_type_embedding", None) is not None:
            raise FrozenEncoderCacheError(
                "--cache-frozen-encoder cannot be combined with --region-embedding type: the learned region-type "
                "embedding trains before BERT, so BERT's output changes")

    # ------------------------------------------------------------------ storage

    def get(self, key: str) -> Optional[torch.Tensor]:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            return entry
        path = self._path(key)
        if path is not None and (key in self._on_disk or os.path.exists(path)):
            entry = torch.from_numpy(np.load(path))
            self._on_disk.add(key)
            self._remember(key, entry)
            return entry
        return None

    def put(self, key: str, hidden: torch.Tensor) -> None:
        entry = hidden.detach().to("cpu", copy=True).contiguous()
        if self.root is not None:  # a directory of the user's: keep every entry for later runs
            self._spill(key, entry)
        self._remember(key, entry)

    def _remember(self, key: str, entry: torch.Tensor) -> None:
        self._memory[key] = entry
        self._used += entry.numel() * entry.element_size()
        while self._used > self.mem_bytes and self._memory:
            old_key, old = self._memory.popitem(last=False)
            self._used -= old.numel() * old.element_size()
            self._spill(old_key, old)

    def _spill(self, key: str, entry: torch.Tensor) -> None:
        if key in self._on_disk:
            return
        with atomic_output(self._path(key, create=True), suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, (entry.float() if entry.dtype == torch.bfloat16 else entry).numpy())  # bf16: exact
        self._on_disk.add(key)

    def _path(self, key: str, create: bool = False) -> Optional[str]:
        if self._dir is None:
            if not create:
                return None
            self._dir = tempfile.mkdtemp(prefix="vlp_mmt_encoder_cache.")
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        return os.path.join(self._dir, key[:2], key + ".npy")

    # ------------------------------------------------------------------ figures

    @property
    def memory_mb(self) -> float:
        return self._used / 2 ** 20

    def __len__(self) -> int:
        return len(set(self._memory) | self._on_disk)
