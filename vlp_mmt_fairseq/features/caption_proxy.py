"""Caption-proxy image features: a stand-in for pixels, built from other people's descriptions of the image.

Multi30K task 2 holds five independent English descriptions of every train, val and test2016 image; one of them is,
up to case, whitespace and punctuation, task 1's source sentence of that image. Without pixels, the *other*
descriptions say what the picture shows beyond the source. For every image this module writes a feature-store entry
(``docs/feature_store.md``, section "Caption-proxy features"):

- one region per distinct remaining description: its sentence embedding (mean over the last layer of a BERT, by
  default the bundled MiniLM, over every token including ``[CLS]``/``[SEP]``, then L2-normalised), box
  ``[0, 0, 1, 1]`` (the whole picture), no scores (regions in description order);
- tags: the detector-vocabulary classes (``objects_vocab.txt``, first synonym) that the remaining descriptions
  mention, scored by how many of them mention the class;
- width = height = 1: there are no pixels, so there is no image size; a 1 x 1 "image" makes the box in "pixels"
  the same as the normalised box.

A description is dropped from its image when it matches the task-1 source sentence of *any* line showing that
image, so no line's own sentence ever enters its image.
"""
import gzip
import hashlib
import logging
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM
from vlp_mmt_fairseq.data.feature_store import FeatureStoreWriter, image_key_from_line
from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import partial_path

logger = logging.getLogger(__name__)

#: task-2 split -> the task-1 split of the same images, in the same line order
TASK1_SPLITS = {"train": "train", "val": "val", "test_2016": "test_2016_flickr"}
DESCRIPTIONS_PER_IMAGE = 5
#: the whole picture, as (x1, y1, x2, y2) over (w, h, w, h)
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
#: width and height written for every image: no pixels exist, so a unit square
IMAGE_SIZE = 1
POOLING = "mean over the last layer, all tokens incl. [CLS]/[SEP], L2-normalised"


class CaptionProxyError(PluginError, ValueError):
    """Unusable input; the message names the file (and line) at fault."""


# --------------------------------------------------------------------------- reading the descriptions


def read_text_lines(path: str) -> List[str]:
    """The lines of a UTF-8 text file (gzip if the name ends in ``.gz``), without their line ends."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise CaptionProxyError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise CaptionProxyError(f"{path}: cannot read it ({e})") from None


def match_key(text: str) -> str:
    """``text`` up to case, whitespace and punctuation: NFKC, case-folded, letters and digits only."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())


@dataclass
class Line:
    """One task-1 line: its image, its source sentence and the five task-2 descriptions of the image."""

    split: str
    index: int  # 0-based line number
    key: str
    source: str
    descriptions: List[str]


def _split_files(task2_dir: str, task1_dir: str, split: str) -> Dict[str, object]:
    if split not in TASK1_SPLITS:
        raise CaptionProxyError(f"unknown split '{split}'; task 2 has {', '.join(TASK1_SPLITS)}")
    task1 = TASK1_SPLITS[split]
    return {
        "descriptions": [os.path.join(task2_dir, "raw", f"{split}.{k}.en.gz")
                         for k in range(1, DESCRIPTIONS_PER_IMAGE + 1)],
        "images": os.path.join(task2_dir, "image_splits", f"{split}_images.txt"),
        "source": os.path.join(task1_dir, "raw", f"{task1}.en.gz"),
        "task1_images": os.path.join(task1_dir, "image_splits", f"{task1}.txt"),
    }


def read_split(task2_dir: str, task1_dir: str, split: str, limit: Optional[int] = None) -> List[Line]:
    """The lines of one split (the first ``limit`` if given), checked for alignment between task 1 and task 2."""
    files = _split_files(task2_dir, task1_dir, split)
    images = read_text_lines(files["images"])
    task1_images = read_text_lines(files["task1_images"])
    sources = read_text_lines(files["source"])
    columns = [read_text_lines(p) for p in files["descriptions"]]
    for path, lines in [(files["task1_images"], task1_images), (files["source"], sources)] + list(
            zip(files["descriptions"], columns)):
        if len(lines) != len(images):
            raise CaptionProxyError(f"{path}: {len(lines)} lines, but {files['images']} has {len(images)}")
    n = len(images) if limit is None else min(limit, len(images))
    result = []
    for i in range(n):
        key = image_key_from_line(images[i])
        if not key:
            raise CaptionProxyError(f"{files['images']}:{i + 1}: empty image-index line")
        if image_key_from_line(task1_images[i]) != key:
            raise CaptionProxyError(f"{files['task1_images']}:{i + 1}: image '{task1_images[i].strip()}' differs "
                                    f"from task 2's '{images[i].strip()}' ({files['images']}:{i + 1})")
        descriptions = [column[i].strip() for column in columns]
        for k, text in enumerate(descriptions):
            if not text:
                raise CaptionProxyError(f"{files['descriptions'][k]}:{i + 1}: empty description")
        result.append(Line(split, i, key, sources[i].strip(), descriptions))
    return result


@dataclass
class ImageDescriptions:
    """The descriptions kept for one image, and what was dropped."""

    key: str
    kept: List[str]
    dropped: int
    lines: int  # task-1 lines showing the image
    sources: int  # distinct source sentences (up to case, whitespace, punctuation) among them


def collect_images(lines: Iterable[Line]) -> Dict[str, ImageDescriptions]:
    """Image key -> its descriptions minus every one matching the source of any line of that image."""
    by_key: Dict[str, List[Line]] = {}
    for line in lines:
        by_key.setdefault(line.key, []).append(line)
    images = {}
    for key, shown in by_key.items():
        banned = {match_key(line.source) for line in shown}
        descriptions = list(dict.fromkeys(d for line in shown for d in line.descriptions))  # once each, in order
        kept = [d for d in descriptions if match_key(d) not in banned]
        if not kept:
            first = shown[0]
            raise CaptionProxyError(f"image '{key}' ({first.split} line {first.index + 1}): every description "
                                    "matches a source sentence; nothing is left to describe it")
        dropped = sum(match_key(d) in banned for line in shown for d in line.descriptions)
        images[key] = ImageDescriptions(key, kept, dropped, len(shown), len(banned))
    return images


# --------------------------------------------------------------------------- object tags

_WORD = re.compile(r"[a-z0-9]+")
_IRREGULAR_PLURALS = {"person": "people", "child": "children", "foot": "feet", "tooth": "teeth", "mouse": "mice",
                      "goose": "geese", "ox": "oxen", "leaf": "leaves", "knife": "knives", "shelf": "shelves"}
#: word sequences in which a vocabulary word names no object: their words tag nothing
NON_OBJECT_PHRASES = frozenset({("in", "front", "of"), ("on", "top", "of"), ("at", "the", "top", "of"),
                                ("on", "the", "back", "of"), ("in", "the", "back", "of"), ("a", "lot", "of"),
                                ("lots", "of")})
#: vocabulary classes that the descriptions use almost only as something else (colour adjectives, verbs, a
#: pronoun, adverbs), found among the most frequent matches on the training descriptions: never tags
NON_OBJECT_CLASSES = frozenset({"black", "yellow", "orange", "stand", "stands", "watch", "smile", "she",
                                "outside", "inside", "short"})


def words(text: str) -> List[str]:
    """Lowercased letter/digit runs (``t-shirt`` -> ``t shirt``, ``man's`` -> ``man s``)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def plural_forms(word: str) -> List[str]:
    """Regular English plurals of a noun (and a few irregular ones)."""
    forms = [word + "s"]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.append(word + "es")
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.append(word[:-1] + "ies")
    if word.endswith("man"):
        forms.append(word[:-3] + "men")
    if word in _IRREGULAR_PLURALS:
        forms.append(_IRREGULAR_PLURALS[word])
    return forms


class TagVocabulary:
    """Finds the detector classes that a description mentions.

    Every class is known by each of its synonyms and by their plurals (of the last word); a word sequence that
    is itself a class name (``men``, ``donuts``) stays that class. Matching is leftmost-longest over the words of
    the description, so ``tennis racket`` tags ``tennis racket``, not ``racket``; the words of
    :data:`NON_OBJECT_PHRASES` (``in front of``) and the classes of :data:`NON_OBJECT_CLASSES` (``black``, the
    colour) tag nothing.
    """

    def __init__(self, path: str):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise CaptionProxyError(f"{path}: cannot read the objects vocabulary ({e})") from None
        self.path = path
        self.classes: List[str] = []
        exact: Dict[Tuple[str, ...], str] = {}
        derived: Dict[Tuple[str, ...], str] = {}
        for lineno, line in enumerate(lines, 1):
            synonyms = [s.strip() for s in line.split(",") if s.strip()]
            if not synonyms:
                raise CaptionProxyError(f"{path}:{lineno}: empty class name in the objects vocabulary")
            name = synonyms[0]
            self.classes.append(name)
            for synonym in synonyms:
                tokens = tuple(words(synonym))
                if not tokens:
                    raise CaptionProxyError(f"{path}:{lineno}: class name '{synonym}' has no letters or digits")
                exact.setdefault(tokens, name)
                for plural in plural_forms(tokens[-1]):
                    derived.setdefault(tokens[:-1] + (plural,), name)
        if not self.classes:
            raise CaptionProxyError(f"{path}: the objects vocabulary is empty")
        self.class_set = frozenset(self.classes)
        self.phrases = dict(derived)
        self.phrases.update(exact)  # a class's own name wins over another class's plural
        self.longest = max(len(p) for p in list(self.phrases) + list(NON_OBJECT_PHRASES))

    def mentions(self, text: str) -> List[str]:
        """The classes that ``text`` mentions, each once, in order of first mention."""
        tokens = words(text)
        found: Dict[str, None] = {}
        i = 0
        while i < len(tokens):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                span = tuple(tokens[i:i + n])
                if span in NON_OBJECT_PHRASES:
                    break
                if span in self.phrases:
                    if self.phrases[span] not in NON_OBJECT_CLASSES:
                        found.setdefault(self.phrases[span], None)
                    break
            else:
                n = 1
            i += n
        return list(found)

    def image_tags(self, descriptions: Sequence[str]) -> Tuple[List[str], np.ndarray]:
        """Tags of an image, scored by the number of descriptions mentioning them, best first (ties: first seen)."""
        counts: Counter = Counter()
        for text in descriptions:
            counts.update(self.mentions(text))
        tags = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep their first-mention order
        return tags, np.array([counts[t] for t in tags], dtype=np.float32)


# --------------------------------------------------------------------------- sentence embeddings


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a hard dependency
        raise ImportError("the caption-proxy store needs torch: pip install torch") from e
    return torch


def length_batches(lengths: Sequence[int], order: Sequence[int], max_tokens: int, max_sentences: int):
    """Split ``order`` (indices sorted by length) into batches of at most ``max_tokens`` padded tokens."""
    batch, longest = [], 0
    for i in order:
        n = max(longest, lengths[i])
        if batch and (n * (len(batch) + 1) > max_tokens or len(batch) >= max_sentences):
            yield batch
            batch, n = [], lengths[i]
        batch.append(i)
        longest = n
    if batch:
        yield batch


class SentenceEncoder:
    """Mean-pooled, L2-normalised last-layer embeddings of a BERT (by default the bundled MiniLM)."""

    def __init__(self, bert_model: str = BUNDLED_MINILM, max_length: int = 256, max_tokens: int = 4096,
                 max_sentences: int = 256):
        from vlp_mmt_fairseq.bert_loading import load_bert_model, load_bert_tokenizer

        self.bert_model = bert_model
        self.tokenizer = load_bert_tokenizer(bert_model)
        self.model = load_bert_model(bert_model).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length, self.max_tokens, self.max_sentences = max_length, max_tokens, max_sentences

    def tokenize(self, texts: Sequence[str], chunk: int = 8192) -> List[List[int]]:
        """WordPiece ids with ``[CLS]``/``[SEP]``; in chunks, so the tokenizer's per-text objects never pile up."""
        ids: List[List[int]] = []
        for start in range(0, len(texts), chunk):
            ids += self.tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=self.max_length,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return ids

    def embed_ids(self, ids: Sequence[List[int]]) -> np.ndarray:
        """One batch of token-id lists -> [B, D] float32."""
        torch = _torch()
        width = max(len(x) for x in ids)
        tokens = torch.zeros(len(ids), width, dtype=torch.long)  # B x T, 0 = [PAD]
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, x in enumerate(ids):
            tokens[row, :len(x)] = torch.tensor(x)
            mask[row, :len(x)] = 1
        with torch.inference_mode():
            hidden = self.model(input_ids=tokens, attention_mask=mask).last_hidden_state  # B x T x D
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # B x T x 1
            pooled = (hidden * weights).sum(1) / weights.sum(1)  # B x D
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()

    def fingerprint(self, texts: Sequence[str]) -> str:
        """Identifies a run (model, pooling, texts), so a resumed run only continues its own work."""
        h = hashlib.sha256(f"{self.bert_model}\n{POOLING}\n{self.max_length}\n".encode("utf-8"))
        for text in texts:
            h.update(text.encode("utf-8") + b"\n")
        return h.hexdigest()

    def encode(self, texts: Sequence[str], resume_path: Optional[str] = None, progress: bool = True,
               flush_every: int = 20) -> Tuple[np.ndarray, int]:
        """Embeddings of ``texts`` ([N, D] float32) and how many were computed now (not resumed).

        Sentences go through the model shortest first, in batches of similar length. With ``resume_path``, the
        finished embeddings are kept there (HDF5, in that order) as they are computed, and a rerun on the same
        texts and model continues after them; the caller deletes the file when done.
        """
        from tqdm import tqdm

        ids = self.tokenize(texts)
        lengths = [len(x) for x in ids]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cache, resumed = None, 0
        if resume_path is not None:
            cache = _open_resume_file(resume_path, self.fingerprint(texts), len(texts), self.dim)
            resumed = int(cache.attrs["done"])
            if resumed:
                out[order[:resumed]] = cache["embeddings"][:resumed]
                logger.info("%s: resuming after %d of %d sentences", resume_path, resumed, len(texts))
        saved = position = resumed
        bar = tqdm(total=len(texts), initial=resumed, desc="caption-proxy embeddings", unit="sent",
                   disable=not progress)
        try:
            batches = length_batches(lengths, order[resumed:], self.max_tokens, self.max_sentences)
            for step, batch in enumerate(batches, 1):
                out[batch] = self.embed_ids([ids[i] for i in batch])
                position += len(batch)
                bar.update(len(batch))
                if cache is not None and step % flush_every == 0:
                    saved = _save_resume(cache, out, order, saved, position)
        finally:
            bar.close()
            if cache is not None:
                _save_resume(cache, out, order, saved, position)
                cache.close()
        return out, len(texts) - resumed


def _open_resume_file(path: str, fingerprint: str, n: int, dim: int):
    """The resume file of this run: the existing one if it belongs to the same texts and model, else a new one."""
    import h5py

    if os.path.exists(path):
        try:
            f = h5py.File(path, "r+")
            if f.attrs.get("fingerprint") == fingerprint and f["embeddings"].shape == (n, dim):
                return f
            f.close()
            logger.warning("%s: left by a run on other texts or another model; starting over", path)
        except (OSError, KeyError) as e:
            logger.warning("%s: unreadable (%s); starting over", path, e)
    f = h5py.File(path, "w")
    f.attrs["fingerprint"] = fingerprint
    f.attrs["done"] = 0
    f.create_dataset("embeddings", shape=(n, dim), dtype=np.float32)  # in encoding order
    f.flush()
    return f


def _save_resume(cache, out: np.ndarray, order: Sequence[int], saved: int, position: int) -> int:
    """Append the embeddings of encoding positions ``saved:position`` to the resume file; return ``position``."""
    if position > saved:
        cache["embeddings"][saved:position] = out[order[saved:position]]
        cache.attrs["done"] = position
        cache.flush()
    return position


# --------------------------------------------------------------------------- the store


def extractor_text(bert_model: str, splits: Sequence[str]) -> str:
    return (f"caption-proxy: {'MiniLM' if bert_model == BUNDLED_MINILM else bert_model} ({bert_model}) "
            f"mean-pooled sentence embeddings of the other Multi30K task-2 descriptions of each image "
            f"(those matching a task-1 source dropped), one whole-image region per description; tags: "
            f"detector-vocabulary words they mention; splits {', '.join(splits)}; a stand-in for pixels, no image "
            f"was seen")


@dataclass
class CaptionProxySummary:
    """What a build did (printed by the console script, optionally written as JSON)."""

    output: str
    extractor: str
    splits: Dict[str, int] = field(default_factory=dict)  # split -> lines read
    images: int = 0
    lines_sharing_an_image: int = 0
    images_with_differing_sources: int = 0
    descriptions_dropped: int = 0
    lines_with_two_or_more_dropped: int = 0
    lines_with_none_dropped: int = 0
    regions_mean: float = 0.0
    tags_mean: float = 0.0
    images_without_tags: int = 0
    distinct_tags: int = 0
    sentences_embedded: int = 0
    sentences_resumed: int = 0
    encode_seconds: float = 0.0
    sentences_per_second: float = 0.0
    total_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def build_caption_proxy_store(output: str, task2_dir: str, task1_dir: str, objects_vocab: str,
                              bert_model: str = BUNDLED_MINILM, splits: Sequence[str] = tuple(TASK1_SPLITS),
                              limit: Optional[int] = None, dtype: str = "float16", max_tokens: int = 4096,
                              progress: bool = True) -> CaptionProxySummary:
    """Write the caption-proxy store of ``splits`` at ``output`` (atomically; resumable through
    ``partial_path(output)``) and return what it holds."""
    start = time.time()
    vocab = TagVocabulary(objects_vocab)
    lines: List[Line] = []
    summary = CaptionProxySummary(output, extractor_text(bert_model, splits))
    for split in splits:
        split_lines = read_split(task2_dir, task1_dir, split, limit)
        summary.splits[split] = len(split_lines)
        lines += split_lines
    images = collect_images(lines)
    for line in lines:
        banned = match_key(line.source)
        dropped = sum(match_key(d) == banned for d in line.descriptions)
        summary.lines_with_two_or_more_dropped += dropped >= 2
        summary.lines_with_none_dropped += dropped == 0
        if dropped == 0:
            logger.warning("%s line %d (image '%s'): no description matches the source sentence", line.split,
                           line.index + 1, line.key)
    summary.images = len(images)
    summary.lines_sharing_an_image = sum(im.lines for im in images.values() if im.lines > 1)
    summary.images_with_differing_sources = sum(im.sources > 1 for im in images.values())
    summary.descriptions_dropped = sum(im.dropped for im in images.values())

    texts = list(dict.fromkeys(d for im in images.values() for d in im.kept))  # each distinct sentence once
    row = {text: i for i, text in enumerate(texts)}
    encoder = SentenceEncoder(bert_model, max_tokens=max_tokens)
    resume = partial_path(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    encode_start = time.time()
    embeddings, computed = encoder.encode(texts, resume_path=resume, progress=progress)
    summary.encode_seconds = round(time.time() - encode_start, 1)
    summary.sentences_embedded, summary.sentences_resumed = computed, len(texts) - computed
    summary.sentences_per_second = round(computed / summary.encode_seconds, 1) if summary.encode_seconds else 0.0

    regions = tags_total = 0
    distinct = set()
    boxes_of = {}
    with FeatureStoreWriter(output, feature_dim=encoder.dim, extractor=summary.extractor, dtype=dtype) as writer:
        for key, image in images.items():
            n = len(image.kept)
            if n not in boxes_of:
                boxes_of[n] = np.tile(np.array(WHOLE_IMAGE_BOX, np.float32), (n, 1))  # R x 4
            tags, tag_scores = vocab.image_tags(image.kept)
            writer.add(key, embeddings[[row[d] for d in image.kept]], boxes_of[n], width=IMAGE_SIZE,
                       height=IMAGE_SIZE, tags=tags, tag_scores=tag_scores)
            regions += n
            tags_total += len(tags)
            summary.images_without_tags += not tags
            distinct.update(tags)
    if os.path.exists(resume):
        os.unlink(resume)
    summary.regions_mean = round(regions / max(1, len(images)), 3)
    summary.tags_mean = round(tags_total / max(1, len(images)), 3)
    summary.distinct_tags = len(distinct)
    summary.total_seconds = round(time.time() - start, 1)
    return summary
