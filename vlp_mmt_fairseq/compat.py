"""The few fixes fairseq 0.12 needs on current torch and Python, in one place.

1. Safe checkpoint loading. Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``,
   which refuses the ``argparse.Namespace`` and omegaconf objects that fairseq checkpoints hold.
   :func:`register_safe_checkpoint_globals` allow-lists exactly those classes; the safety itself
   stays on.
2. Lost sentences. fairseq's ``batch_by_size`` silently drops the last batch when its size is not
   a multiple of ``--required-batch-size-multiple`` (fairseq issues 5036, 5351).
   :func:`restore_dropped_sentences` appends whatever fairseq's batches left out; every
   dataset of the project's tasks batches through it. Recipes for the stock ``translation`` task pass
   ``--required-batch-size-multiple 1``, which fairseq's batching handles without loss.
"""
import argparse
import collections
import typing

import numpy as np


def checkpoint_safe_globals() -> list:
    """The classes (beyond torch's defaults) that a fairseq checkpoint's pickle refers to."""
    import omegaconf
    from omegaconf import nodes
    from omegaconf.base import Container, ContainerMetadata, Metadata, Node

    return [
        argparse.Namespace,
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        Container,
        ContainerMetadata,
        Metadata,
        Node,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
        nodes.EnumNode,
        nodes.ValueNode,
        typing.Any,
        dict,
        list,
        int,
        collections.defaultdict,
        collections.OrderedDict,
    ]


def register_safe_checkpoint_globals() -> None:
    """Allow-list fairseq's checkpoint classes for ``torch.load(weights_only=True)``."""
    import torch

    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(checkpoint_safe_globals())


def restore_dropped_sentences(batches, indices, num_tokens_fn, max_tokens=None, max_sentences=None):
    """Append to fairseq's ``batches`` every index of ``indices`` they left out.

    The missing indices keep their order and form extra batches that respect ``max_tokens`` and
    ``max_sentences`` (they may be smaller than the batch-size multiple).
    """
    batches = list(batches)
    if sum(len(b) for b in batches) == len(indices):
        return batches
    seen = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    batch, batch_max = [], 0
    for i in np.asarray(indices)[~np.isin(indices, seen)].tolist():
        n = int(num_tokens_fn(i))
        new_max = max(batch_max, n)
        too_many = bool(max_sentences) and len(batch) + 1 > max_sentences
        too_long = bool(max_tokens) and new_max * (len(batch) + 1) > max_tokens
        if batch and (too_many or too_long):
            batches.append(np.array(batch, dtype=np.int64))
            batch, new_max = [], n
        batch.append(i)
        batch_max = new_max
    if batch:
        batches.append(np.array(batch, dtype=np.int64))
    return batches
