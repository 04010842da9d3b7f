"""Cross-attention mass: how much of each decoder layer's attention goes to text, tag, region and special positions.

The references of a split are force-decoded (teacher forcing, the model in eval mode, no dropout), and every
decoder layer's cross-attention weights (fairseq's ``MultiheadAttention`` returns them averaged over heads)
are captured with forward hooks; nothing the model computes changes. For each target token (padding
excluded) the weights of a layer are summed over the encoder positions of each :class:`PositionKind`; the
mass of a kind is the mean of those sums over all target tokens. Per layer the kinds sum to 1, since
padding (and, with ``--decoder-memory text``, every region) gets no weight.
"""
import json
import logging
from collections import OrderedDict
from typing import Dict, Iterable, List

import torch

from vlp_mmt_fairseq.file_utils import atomic_output
from vlp_mmt_fairseq.modules.text_packing import PositionKind

#: the reported kinds, in order: name -> PositionKind ("text" is the source sentence's WordPieces)
KINDS = OrderedDict([("text", PositionKind.SOURCE), ("tag", PositionKind.TAG), ("region", PositionKind.REGION),
                     ("special", PositionKind.SPECIAL)])


class CrossAttentionRecorder:
    """Forward hooks on every decoder layer's ``encoder_attn`` that keep its attention weights (B x T x S)."""

    def __init__(self, decoder):
        self.layers = list(decoder.layers)
        self.weights: List[torch.Tensor] = []
        self._handles = []
        self._need_attn = []

    def __enter__(self):
        for layer in self.layers:
            self._need_attn.append(layer.need_attn)
            layer.need_attn = True  # in eval mode fairseq's decoder layer then returns the weights of every layer
            self._handles.append(layer.encoder_attn.register_forward_hook(self._keep))
        return self

    def _keep(self, module, args, output):
        weights = output[1]
        if weights is None:
            raise RuntimeError("a cross-attention returned no weights: run the model in eval mode")
        if weights.dim() == 4:  # heads x B x T x S (the layer fairseq aligns with asks for every head)
            weights = weights.mean(dim=0)
        self.weights.append(weights.detach().float())  # B x T x S

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        for layer, need_attn in zip(self.layers, self._need_attn):
            layer.need_attn = need_attn
        self._handles, self._need_attn = [], []
        return False


class AttentionMass:
    """Running sums of the per-layer, per-kind cross-attention mass over target tokens."""

    def __init__(self):
        self.sums = None  # layers x kinds (PositionKind values 0..4)
        self.tokens = 0
        self.sentences = 0

    def add(self, layer_weights: List[torch.Tensor], kinds: torch.Tensor, target_keep: torch.Tensor) -> None:
        """``layer_weights``: per layer B x T x S; ``kinds``: B x S; ``target_keep``: B x T (real target tokens)."""
        one_hot = torch.nn.functional.one_hot(kinds.long(), num_classes=len(PositionKind)).float()  # B x S x K
        keep = target_keep.float().unsqueeze(-1)  # B x T x 1
        per_layer = torch.stack([((w @ one_hot) * keep).sum(dim=(0, 1)) for w in layer_weights])  # L x K
        self.sums = per_layer if self.sums is None else self.sums + per_layer
        self.tokens += int(target_keep.sum())
        self.sentences += target_keep.size(0)

    def result(self) -> Dict:
        """``{"layers": [{"text": m, "tag": m, "region": m, "special": m, "pad": m}, ...], "tokens": N, ...}``."""
        if self.sums is None or self.tokens == 0:
            raise ValueError("no target tokens were force-decoded")
        mass = (self.sums / self.tokens).tolist()
        layers = [{name: row[int(kind)] for name, kind in KINDS.items()} for row in mass]
        for layer, row in zip(layers, mass):
            layer["pad"] = row[int(PositionKind.PAD)]
        return {"layers": layers, "tokens": self.tokens, "sentences": self.sentences}


@torch.no_grad()
def attention_mass(model, batches: Iterable[dict], pad: int, max_sentences: int = None) -> Dict:
    """Force-decode ``batches`` (fairseq samples of a ``vlp_mmt`` task) and return :meth:`AttentionMass.result`."""
    model.eval()
    mass = AttentionMass()
    for sample in batches:
        if not sample or (max_sentences is not None and mass.sentences >= max_sentences):
            continue
        net_input = sample["net_input"]
        encoder_out = model.encoder(**net_input)
        with CrossAttentionRecorder(model.decoder) as recorder:
            model.decoder(net_input["prev_output_tokens"], encoder_out=encoder_out)
        kinds = encoder_out["position_kinds"][0]  # B x S
        mass.add(recorder.weights, kinds, sample["target"].ne(pad))
    return mass.result()


# ----------------------------------------------------------------------------- outputs


def write_json(results: Dict[str, Dict], path: str) -> None:
    """``results``: label -> :func:`attention_mass` result."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


def write_tsv(results: Dict[str, Dict], path: str) -> None:
    """One row per checkpoint and layer: ``checkpoint layer text tag region special tokens``."""
    lines = ["\t".join(["checkpoint", "layer", *KINDS, "tokens"])]
    for label, result in results.items():
        for index, layer in enumerate(result["layers"], 1):
            lines.append("\t".join([label, str(index), *(f"{layer[k]:.4f}" for k in KINDS), str(result["tokens"])]))
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def plot(results: Dict[str, Dict], path: str, title: str = "Decoder cross-attention mass") -> None:
    """Stacked bars: per checkpoint (one panel each) and decoder layer, the mass of each kind."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the attention-mass plot needs matplotlib: pip install -e '.[plot]'") from e
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"text": "#4c72b0", "tag": "#dd8452", "region": "#55a868", "special": "#8c8c8c"}
    fig, axes = plt.subplots(1, len(results), figsize=(2.2 + 1.6 * len(results) * max(
        len(r["layers"]) for r in results.values()) / 2, 3.4), sharey=True, squeeze=False)
    for ax, (label, result) in zip(axes[0], results.items()):
        layers = list(range(1, len(result["layers"]) + 1))
        bottom = [0.0] * len(layers)
        for kind in KINDS:
            values = [layer[kind] for layer in result["layers"]]
            ax.bar(layers, values, bottom=bottom, color=colors[kind], label=kind, width=0.7)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("decoder layer")
        ax.set_xticks(layers)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("cross-attention mass")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
