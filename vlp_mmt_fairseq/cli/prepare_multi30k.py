"""Prepare Multi30K (task 1) text for vlp_mmt_fairseq and its text-only baselines.

Usage::

    python preprocess/prepare_multi30k.py --src en --tgt de --out data-bin/multi30k.en-de

Input (``--multi30k-dir``, default ``$MULTI30K_DIR``, else ``../shared/multi30k`` beside the
repository) is laid out like ``data/task1`` of the Multi30K GitHub repository (``--download``
fetches it)::

    raw/{split}.{lang}.gz               original text, one sentence per line (gzip)
    tok/{split}.lc.norm.tok.{lang}      official lowercased Moses-tokenized text (optional)
    image_splits/{split}.txt            line i names the image of sentence i

Every split that has both languages is prepared (or those named by ``--splits``), under fairseq's
split names: train <- train, valid <- val, test2016 <- test_2016_flickr, test2017 <-
test_2017_flickr, mscoco <- test_2017_mscoco, test2018 <- test_2018_flickr (other names are kept).

Output (``--out OUT``, built in ``OUT.tmp-<pid>`` and renamed into place only on success)::

    OUT/
      raw/{split}.{src,tgt}        the original sentences, whitespace-normalized: runs of
                                   whitespace (tabs, no-break spaces) become one space and the ends
                                   are stripped; nothing else changes (references for sacreBLEU)
      tok/{split}.{src,tgt}        copies of the official tokenized text (only where tok/ has it)
      images/{split}.txt|.npy      the image index of the split (text copy, memory-mappable keys)
      spm/spm.{tgt}.model|.vocab   target SentencePiece (unigram, trained on raw train targets,
                                   normalization "identity" + byte fallback: decoding gives back
                                   the raw text exactly); spm/spm.{src}.* likewise for baselines
      bert/                        data dir of ``--task vlp_mmt`` (BERT-encoder source)
        {split}.{src}-{tgt}.{src}.bin/.idx   BERT ids of the raw sentence: [CLS] x [SEP], no eos
        {split}.{src}-{tgt}.{tgt}.bin/.idx   target SentencePiece ids (same as text/)
        {split}.img.txt|.npy                 the image index (copies of images/)
        dict.{src}.txt                       the BERT vocabulary in id order (informational)
        dict.{tgt}.txt                       the fairseq target dictionary (same as text/)
      text/                        data dir of fairseq's ``--task translation`` (SentencePiece
                                   source and target, written by ``fairseq-preprocess``)
      prepare.json                 arguments, BERT model, vocabulary sizes, line counts per split

The BERT-fused baseline reads ``text/`` plus the BERT ids ``bert/{split}.{src}-{tgt}.{src}``.
"""
import argparse
import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from vlp_mmt_fairseq.bert_loading import (
    BUNDLED_MINILM,
    BertModelNotFound,
    bert_vocab_file,
    load_bert_config,
    load_bert_tokenizer,
    resolve_bert_path,
)
from vlp_mmt_fairseq.data.feature_store import image_key_from_line, write_image_index_npy
from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_output

logger = logging.getLogger("prepare_multi30k")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1"

#: Multi30K split name -> fairseq split name, in output order.
SPLIT_NAMES = {
    "train": "train",
    "val": "valid",
    "test_2016_flickr": "test2016",
    "test_2017_flickr": "test2017",
    "test_2017_mscoco": "mscoco",
    "test_2018_flickr": "test2018",
}
BATCH_SIZE = 1000
#: SentencePiece's result depends on its thread count; a constant keeps it machine-independent.
SPM_TRAIN_THREADS = 4


class PrepareError(PluginError):
    """The input cannot be prepared; the message names the file (and line) at fault."""


@dataclass
class SplitText:
    """The validated text of one split."""

    name: str  # Multi30K name, e.g. test_2016_flickr
    out_name: str  # fairseq name, e.g. test2016
    src_path: str
    tgt_path: str
    image_path: str
    src: List[str]
    tgt: List[str]
    tok_paths: Optional[Dict[str, str]] = None
    normalized: Dict[str, int] = field(default_factory=dict)  # lines whose whitespace changed
    bert_ids: List[List[int]] = field(default_factory=list)


# --------------------------------------------------------------------------- input


def default_multi30k_dir() -> Optional[str]:
    """``$MULTI30K_DIR``, else ``../shared/multi30k`` beside the repository if it exists."""
    if os.environ.get("MULTI30K_DIR"):
        return os.environ["MULTI30K_DIR"]
    shared = os.path.join(os.path.dirname(REPO_ROOT), "shared", "multi30k")
    return shared if os.path.isdir(shared) else None


def _fetch(url: str, path: str) -> bool:
    """Download ``url`` to ``path`` atomically; False if the server has no such file (404)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise PrepareError(f"{url}: download failed ({e})") from e
    except urllib.error.URLError as e:
        raise PrepareError(f"{url}: download failed ({e.reason})") from e
    return True


def download_multi30k(directory: str, langs: Sequence[str]) -> None:
    """Fetch Multi30K task 1 (raw, tok, image_splits) for ``langs`` into ``directory``.

    Files already present are kept; files the repository does not have (e.g. Czech test 2017)
    are skipped.
    """
    wanted = []
    for split in SPLIT_NAMES:
        wanted.append(f"image_splits/{split}.txt")
        for lang in langs:
            wanted += [f"raw/{split}.{lang}.gz", f"tok/{split}.lc.norm.tok.{lang}"]
    for relative in tqdm(wanted, desc="download Multi30K", unit="file"):
        path = os.path.join(directory, relative)
        if not os.path.exists(path) and not _fetch(f"{MULTI30K_URL}/{relative}", path):
            logger.info(f"not in the Multi30K repository: {relative}")


def discover_splits(directory: str, src: str, tgt: str) -> List[str]:
    """Multi30K names of the splits with raw text in both languages, known splits first."""
    raw_dir = os.path.join(directory, "raw")
    if not os.path.isdir(raw_dir):
        raise PrepareError(f"{raw_dir}: no such directory; is {directory} a Multi30K task1 folder?")
    pattern = re.compile(r"^(.+)\.([^.]+)\.gz$")
    langs_of: Dict[str, set] = {}
    for name in os.listdir(raw_dir):
        match = pattern.match(name)
        if match:
            langs_of.setdefault(match.group(1), set()).add(match.group(2))
    found = [split for split, langs in langs_of.items() if {src, tgt} <= langs]
    order = list(SPLIT_NAMES)
    return sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s))


def select_splits(available: List[str], requested: Optional[Sequence[str]], directory: str) -> List[str]:
    """The splits named by ``--splits`` (Multi30K or fairseq names), checked against ``available``."""
    if not requested:
        return available
    by_out_name = {SPLIT_NAMES.get(s, s): s for s in available}
    chosen = []
    for name in requested:
        split = name if name in available else by_out_name.get(name)
        if split is None:
            raise PrepareError(
                f"--splits {name}: not available in {directory} for this language pair "
                f"(available: {', '.join(available) or 'none'})"
            )
        if split not in chosen:
            chosen.append(split)
    return [s for s in available if s in chosen]


def normalize_whitespace(line: str) -> str:
    """Runs of whitespace (incl. tabs and no-break spaces) -> one space; ends stripped."""
    return " ".join(line.split())


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_sentences(path: str):
    """Whitespace-normalized lines of ``path`` and how many changed; empty lines are errors."""
    sentences, changed = [], 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                original = line[:-1] if line.endswith("\n") else line
                sentence = normalize_whitespace(original)
                if not sentence:
                    raise PrepareError(f"{path}:{lineno}: empty line")
                changed += sentence != original
                sentences.append(sentence)
    except FileNotFoundError:
        raise PrepareError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text ({e})") from None
    except (OSError, EOFError) as e:
        raise PrepareError(f"{path}: unreadable ({e})") from None
    return sentences, changed


def count_image_lines(path: str) -> int:
    """Lines of an image index; a line naming no image is an error."""
    if not os.path.exists(path):
        raise PrepareError(f"{path}: image index not found")
    count = 0
    with open(path, encoding="utf-8") as f:
        for count, line in enumerate(f, 1):
            if not image_key_from_line(line):
                raise PrepareError(f"{path}:{count}: empty image-index line")
    return count


def count_lines(path: str) -> int:
    with open(path, encoding="utf-8", newline="\n") as f:
        return sum(1 for _ in f)


def load_split(directory: str, split: str, src: str, tgt: str) -> SplitText:
    """Read and check one split: equal line counts across source, target, image index (and tok/)."""
    src_path = os.path.join(directory, "raw", f"{split}.{src}.gz")
    tgt_path = os.path.join(directory, "raw", f"{split}.{tgt}.gz")
    image_path = os.path.join(directory, "image_splits", f"{split}.txt")
    src_lines, src_changed = read_sentences(src_path)
    tgt_lines, tgt_changed = read_sentences(tgt_path)
    counts = {src_path: len(src_lines), tgt_path: len(tgt_lines), image_path: count_image_lines(image_path)}
    tok_paths = {lang: os.path.join(directory, "tok", f"{split}.lc.norm.tok.{lang}") for lang in (src, tgt)}
    if all(os.path.exists(p) for p in tok_paths.values()):
        counts.update({p: count_lines(p) for p in tok_paths.values()})
    else:
        tok_paths = None
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{path} has {n}" for path, n in counts.items())
        raise PrepareError(f"split {split}: line counts differ: {detail}")
    return SplitText(
        split, SPLIT_NAMES.get(split, split), src_path, tgt_path, image_path, src_lines, tgt_lines,
        tok_paths, {src: src_changed, tgt: tgt_changed},
    )


# --------------------------------------------------------------------------- BERT source


def bert_token_ids(tokenizer, split: SplitText, max_positions: int) -> List[List[int]]:
    """``tokenizer(sentence)["input_ids"]`` of every source line; longer than BERT allows is an error."""
    ids = []
    lines = split.src
    for start in tqdm(range(0, len(lines), BATCH_SIZE), desc=f"BERT-tokenize {split.out_name}", unit="batch"):
        batch = tokenizer(lines[start:start + BATCH_SIZE], add_special_tokens=True, verbose=False)
        for offset, sentence_ids in enumerate(batch["input_ids"]):
            if len(sentence_ids) > max_positions:
                raise PrepareError(
                    f"split {split.name}: {split.src_path}:{start + offset + 1}: the source has "
                    f"{len(sentence_ids)} BERT tokens, more than the model's {max_positions} positions"
                )
        ids.extend(batch["input_ids"])
    return ids


def write_bert_source(prefix: str, ids: List[List[int]], vocab_size: int) -> None:
    """Binarize BERT ids as a fairseq mmap indexed dataset at ``prefix``.bin/.idx."""
    import torch
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=vocab_size)
    for sentence_ids in ids:
        builder.add_item(torch.IntTensor(sentence_ids))
    builder.finalize(prefix + ".idx")


# --------------------------------------------------------------------------- SentencePiece


def train_sentencepiece(text_file: str, model_prefix: str, vocab_size: int):
    """Train a unigram model that reproduces the text exactly (identity normalization, byte fallback)."""
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=text_file,
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # small corpora get a smaller vocabulary instead of an error
            model_type="unigram",
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            num_threads=SPM_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise PrepareError(
            f"SentencePiece training on {os.path.basename(text_file)} (train) failed "
            f"with vocabulary size {vocab_size}: {e}"
        ) from e
    return spm.SentencePieceProcessor(model_file=model_prefix + ".model")


def encode_pieces(processor, lines: List[str], desc: str) -> List[List[str]]:
    """SentencePiece pieces of each line, in batches with a progress bar."""
    pieces = []
    for start in tqdm(range(0, len(lines), BATCH_SIZE), desc=desc, unit="batch"):
        pieces.extend(processor.encode(lines[start:start + BATCH_SIZE], out_type=str))
    return pieces


def sentencepiece_dictionary(processor, train_pieces: List[List[str]]):
    """A fairseq Dictionary holding every piece of the model (so no piece is ever <unk>).

    Pieces keep the model's order; counts are their frequencies in the training text.
    """
    from collections import Counter

    from fairseq.data import Dictionary

    counts = Counter(piece for line in train_pieces for piece in line)
    dictionary = Dictionary()
    for piece_id in range(processor.get_piece_size()):
        if processor.is_control(piece_id) or processor.is_unknown(piece_id):
            continue
        piece = processor.id_to_piece(piece_id)
        dictionary.add_symbol(piece, n=counts.get(piece, 0))
    return dictionary


def write_lines(path: str, lines) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


# --------------------------------------------------------------------------- fairseq-preprocess


def run_fairseq_preprocess(prefixes: List[str], out_names: List[str], src: str, tgt: str,
                           src_dict: str, tgt_dict: str, destdir: str, workers: int) -> None:
    """Binarize SentencePiece text with the real ``fairseq-preprocess`` into ``destdir``.

    fairseq-preprocess names its outputs by position (test, test1, test2, ...), so every split is
    passed as a test prefix and the outputs are renamed to ``out_names`` afterwards.
    """
    command = [
        sys.executable, "-m", "fairseq_cli.preprocess",
        "--source-lang", src, "--target-lang", tgt,
        "--testpref", ",".join(prefixes),
        "--srcdict", src_dict, "--tgtdict", tgt_dict,
        "--destdir", destdir, "--dataset-impl", "mmap", "--workers", str(workers),
    ]
    logger.info("running fairseq-preprocess")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logger.debug(result.stdout)
    if result.returncode != 0:
        raise PrepareError(
            f"fairseq-preprocess failed (exit {result.returncode}):\n{result.stdout[-4000:]}"
        )
    for k, out_name in enumerate(out_names):
        position_name = "test" if k == 0 else f"test{k}"
        for lang in (src, tgt):
            for ext in ("bin", "idx"):
                os.replace(
                    os.path.join(destdir, f"{position_name}.{src}-{tgt}.{lang}.{ext}"),
                    os.path.join(destdir, f"{out_name}.{src}-{tgt}.{lang}.{ext}"),
                )


# --------------------------------------------------------------------------- orchestration


def write_text_copies(splits: List[SplitText], build_dir: str, src: str, tgt: str) -> None:
    """raw/, tok/ and images/ of every split."""
    for split in splits:
        write_lines(os.path.join(build_dir, "raw", f"{split.out_name}.{src}"), split.src)
        write_lines(os.path.join(build_dir, "raw", f"{split.out_name}.{tgt}"), split.tgt)
        if split.tok_paths:
            os.makedirs(os.path.join(build_dir, "tok"), exist_ok=True)
            for lang, path in split.tok_paths.items():
                shutil.copyfile(path, os.path.join(build_dir, "tok", f"{split.out_name}.{lang}"))
        images_txt = os.path.join(build_dir, "images", f"{split.out_name}.txt")
        os.makedirs(os.path.dirname(images_txt), exist_ok=True)
        shutil.copyfile(split.image_path, images_txt)
        write_image_index_npy(images_txt, os.path.join(build_dir, "images", f"{split.out_name}.npy"))


def write_sentencepiece_text(splits: List[SplitText], lang: str, is_source: bool, vocab_size: int,
                             build_dir: str, scratch: str):
    """Train spm/spm.{lang}, encode every split into ``scratch`` and write its fairseq dictionary.

    Returns (number of pieces, path of the dictionary, the Dictionary).
    """
    processor = train_sentencepiece(
        os.path.join(build_dir, "raw", f"train.{lang}"), os.path.join(build_dir, "spm", f"spm.{lang}"),
        vocab_size,
    )
    train_pieces = None
    for split in splits:
        pieces = encode_pieces(processor, split.src if is_source else split.tgt,
                               f"SentencePiece {lang} {split.out_name}")
        write_lines(os.path.join(scratch, f"{split.out_name}.{lang}"), (" ".join(p) for p in pieces))
        if split.name == "train":
            train_pieces = pieces
    logger.info(f"SentencePiece {lang}: {processor.get_piece_size()} pieces")
    dictionary = sentencepiece_dictionary(processor, train_pieces)
    dict_path = os.path.join(scratch, f"dict.{lang}.txt")
    dictionary.save(dict_path)
    return processor.get_piece_size(), dict_path, dictionary


def write_bert_dir(splits: List[SplitText], build_dir: str, src: str, tgt: str, bert_dict, tgt_dict_path: str):
    """bert/: BERT-id source, the target and image index of text/ and images/, both dictionaries."""
    bert_dir = os.path.join(build_dir, "bert")
    text_dir = os.path.join(build_dir, "text")
    os.makedirs(bert_dir, exist_ok=True)
    for split in tqdm(splits, desc="binarize BERT source", unit="split"):
        pair = f"{split.out_name}.{src}-{tgt}"
        write_bert_source(os.path.join(bert_dir, f"{pair}.{src}"), split.bert_ids, len(bert_dict))
        for ext in ("bin", "idx"):
            shutil.copyfile(os.path.join(text_dir, f"{pair}.{tgt}.{ext}"),
                            os.path.join(bert_dir, f"{pair}.{tgt}.{ext}"))
        for ext in ("txt", "npy"):
            shutil.copyfile(
                os.path.join(build_dir, "images", f"{split.out_name}.{ext}"),
                os.path.join(bert_dir, f"{split.out_name}.img.{ext}"),
            )
    bert_dict.save(os.path.join(bert_dir, f"dict.{src}.txt"))
    shutil.copyfile(tgt_dict_path, os.path.join(bert_dir, f"dict.{tgt}.txt"))


def read_and_check(args, tokenizer, max_positions: int) -> List[SplitText]:
    """All chosen splits, read, checked and BERT-tokenized (before anything is written)."""
    available = discover_splits(args.multi30k_dir, args.src, args.tgt)
    if not available:
        raise PrepareError(f"{args.multi30k_dir}/raw: no split has both {args.src} and {args.tgt} text")
    split_names = select_splits(available, args.splits, args.multi30k_dir)
    if "train" not in split_names:
        raise PrepareError("the SentencePiece models are trained on the train split: include train in --splits")
    splits = [load_split(args.multi30k_dir, name, args.src, args.tgt) for name in split_names]
    for split in splits:
        split.bert_ids = bert_token_ids(tokenizer, split, max_positions)
    logger.info(f"checked {len(splits)} splits: " + ", ".join(f"{s.out_name} {len(s.src)}" for s in splits))
    return splits


def prepare(args, build_dir: str) -> dict:
    """Write the whole output layout into ``build_dir``; returns the prepare.json record."""
    from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary

    started = time.time()
    src, tgt = args.src, args.tgt
    tokenizer = load_bert_tokenizer(args.bert_model)
    max_positions = load_bert_config(args.bert_model).max_position_embeddings
    bert_dict = BertDictionary(bert_vocab_file(args.bert_model))

    splits = read_and_check(args, tokenizer, max_positions)
    write_text_copies(splits, build_dir, src, tgt)

    scratch = os.path.join(build_dir, "_scratch")
    os.makedirs(os.path.join(build_dir, "spm"), exist_ok=True)
    requested = {src: args.spm_vocab_size_src, tgt: args.spm_vocab_size}
    pieces, dict_paths, dict_sizes = {}, {}, {}
    for lang in (src, tgt):
        pieces[lang], dict_paths[lang], dictionary = write_sentencepiece_text(
            splits, lang, lang == src, requested[lang], build_dir, scratch
        )
        dict_sizes[lang] = len(dictionary)

    out_names = [split.out_name for split in splits]
    run_fairseq_preprocess(
        [os.path.join(scratch, name) for name in out_names], out_names, src, tgt,
        dict_paths[src], dict_paths[tgt], os.path.join(build_dir, "text"), args.workers,
    )
    write_bert_dir(splits, build_dir, src, tgt, bert_dict, dict_paths[tgt])
    shutil.rmtree(scratch)

    return {
        "args": vars(args),
        "multi30k_dir": os.path.abspath(args.multi30k_dir),
        "bert_model": {
            "name": args.bert_model,
            "path": resolve_bert_path(args.bert_model),
            "vocab_size": len(bert_dict),
            "max_positions": max_positions,
        },
        "sentencepiece": {
            lang: {"requested_vocab_size": requested[lang], "pieces": pieces[lang]} for lang in (src, tgt)
        },
        "fairseq_dictionary_sizes": dict_sizes,
        "splits": {
            split.out_name: {
                "multi30k_name": split.name,
                "lines": len(split.src),
                "tok": bool(split.tok_paths),
                "max_bert_tokens": max(len(ids) for ids in split.bert_ids),
                "whitespace_normalized_lines": split.normalized,
            }
            for split in splits
        },
        "seconds": round(time.time() - started, 1),
    }


def publish(build_dir: str, out: str, force: bool) -> None:
    """Rename the finished ``build_dir`` onto ``out`` (replacing an old ``out`` only with --force)."""
    old = None
    if os.path.exists(out):
        if not force:
            raise PrepareError(f"{out} already exists; pass --force to replace it")
        old = f"{out}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(build_dir, out)
    if old:
        shutil.rmtree(old)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prepare Multi30K text: raw/tok copies, image indexes, SentencePiece, "
                    "BERT-source (bert/) and text-only (text/) fairseq data dirs.",
    )
    parser.add_argument("--multi30k-dir", default=default_multi30k_dir(),
                        help="Multi30K data/task1 folder (raw/, tok/, image_splits/); "
                             "default $MULTI30K_DIR, else ../shared/multi30k beside the repository")
    parser.add_argument("--download", action="store_true",
                        help="first fetch the missing Multi30K files from GitHub into --multi30k-dir")
    parser.add_argument("--src", default="en", help="source language (default en)")
    parser.add_argument("--tgt", default="de", help="target language: de, fr or cs (default de)")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--bert-model", default=BUNDLED_MINILM,
                        help=f"BERT whose tokenizer makes the source ids (default {BUNDLED_MINILM})")
    parser.add_argument("--spm-vocab-size", type=int, default=8000,
                        help="target SentencePiece vocabulary size (default 8000)")
    parser.add_argument("--spm-vocab-size-src", type=int, default=8000,
                        help="source SentencePiece vocabulary size, for the text baselines (default 8000)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to prepare, Multi30K or fairseq names (default: all with both languages)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes for fairseq-preprocess (default: the number of CPUs, at most 4)")
    return parser


def cli_main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=os.environ.get("LOGLEVEL", "INFO").upper(),
        stream=sys.stderr,
        force=True,  # importing fairseq has already configured logging
    )
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.src == args.tgt:
        parser.error("--src and --tgt must differ")
    if not args.multi30k_dir:
        parser.error("--multi30k-dir is required (no $MULTI30K_DIR and no ../shared/multi30k)")
    out = os.path.abspath(args.out.rstrip(os.sep) or args.out)
    build_dir = f"{out}.tmp-{os.getpid()}"
    try:
        if os.path.exists(out) and not args.force:
            raise PrepareError(f"{out} already exists; pass --force to replace it")
        resolve_bert_path(args.bert_model)
        if args.download:
            download_multi30k(args.multi30k_dir, (args.src, args.tgt))
        record = prepare(args, build_dir)
        with open(os.path.join(build_dir, "prepare.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
        publish(build_dir, out, args.force)
    except (PrepareError, BertModelNotFound) as e:
        print(f"prepare_multi30k.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if os.path.exists(build_dir):
            shutil.rmtree(build_dir)
    logger.info(f"wrote {out} in {record['seconds']} s")


if __name__ == "__main__":
    cli_main()
