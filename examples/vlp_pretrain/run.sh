#!/usr/bin/env bash
# Vision-language pre-training (Algorithm 1, steps 1-4), then translation with the pre-trained encoder.
#
#   examples/vlp_pretrain/run.sh [WORK_DIR]          (default WORK_DIR: work_dirs/vlp_pretrain)
#
# Small CPU settings by default; every size is an environment variable (see README.md):
#   MULTI30K_DIR (../shared/multi30k), BERT_MODEL (bundled-minilm), FEATURES (synthetic, written here),
#   VLP_UPDATES (300), CONTINUE_UPDATES (50), MMT_UPDATES (200), BATCH (16), THREADS (2), DEVICE_FLAGS (--cpu)
# Each step is skipped when its output exists, so an interrupted run continues where it stopped.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-work_dirs/vlp_pretrain}
MULTI30K=${MULTI30K_DIR:-$REPO/../shared/multi30k}
BERT=${BERT_MODEL:-bundled-minilm}
VLP_UPDATES=${VLP_UPDATES:-300}
CONTINUE_UPDATES=${CONTINUE_UPDATES:-50}
MMT_UPDATES=${MMT_UPDATES:-200}
BATCH=${BATCH:-16}
DEVICE_FLAGS=${DEVICE_FLAGS:---cpu}
export OMP_NUM_THREADS=${THREADS:-2}
PY=${PYTHON:-python}
USER_DIR=$REPO/vlp_mmt_fairseq
DATA=$WORK/multi30k.en-de
mkdir -p "$WORK"

run() { echo "+ $*" >&2; "$@"; }

# Multi30K en-de as vlp_mmt reads it (data/bert: [CLS] x [SEP] sources, image indexes)
[ -d "$DATA" ] || run $PY "$REPO/preprocess/prepare_multi30k.py" --multi30k-dir "$MULTI30K" --src en --tgt de \
  --out "$DATA" --spm-vocab-size 8000 --spm-vocab-size-src 8000

# Image features: a real store if FEATURES is given, else a synthetic one whose regions plant the content
# words of each image's English caption (as a perfect detector would see them) and whose tags are 3 of them
FEATURES=${FEATURES:-$WORK/features.h5}
if [ ! -f "$FEATURES" ]; then
  run $PY "$REPO/examples/multi30k/image_concepts.py" --data "$DATA" --src en --out-dir "$WORK/concepts"
  run $PY "$REPO/preprocess/synthetic_store.py" --keys-from "$DATA"/images/*.txt \
    --concepts-tsv "$WORK/concepts/concepts.tsv" --tags-tsv "$WORK/concepts/tags.tsv" \
    --feature-dim 64 --regions 10 --output "$FEATURES"
fi

# Steps 1-2: BERT (here the bundled MiniLM) pre-trained on an image-caption corpus. A real run uses COCO,
# Visual Genome, Conceptual Captions, SBU (about 6M pairs), each binarized by prepare_captions.py and joined
# with ':'; offline, the corpus here is the Multi30K training captions with their Flickr30K images.
CAPTIONS=$WORK/captions
if [ ! -f "$CAPTIONS/valid.img.npy" ]; then
  run $PY "$REPO/preprocess/prepare_captions.py" --bert-model "$BERT" --out "$CAPTIONS" --split train valid \
    --captions "$DATA/raw/train.en" "$DATA/raw/valid.en" --images "$DATA/images/train.txt" "$DATA/images/valid.txt"
fi
COMMON=(--user-dir "$USER_DIR" --task vlp_pretrain --arch vlp_pretrain_base --criterion vlp_pretrain_loss
  --bert-model "$BERT" --image-features "$FEATURES" --max-regions 10 --optimizer adam --adam-betas "(0.9, 0.98)"
  --weight-decay 0.01 --clip-norm 1.0 --batch-size "$BATCH" --num-workers 0 --seed 1 --log-format json
  --log-interval 10 --no-epoch-checkpoints $DEVICE_FLAGS)
[ -f "$WORK/ckpt/vlp/checkpoint_last.pt" ] || run fairseq-train "$CAPTIONS" "${COMMON[@]}" \
  --lr 2e-4 --lr-scheduler polynomial_decay --warmup-updates 30 --total-num-update "$VLP_UPDATES" \
  --max-update "$VLP_UPDATES" --validate-interval-updates "$VLP_UPDATES" --save-dir "$WORK/ckpt/vlp" \
  2>&1 | tee "$WORK/vlp.log"

# Steps 3-4: continue on the (image, source sentence) pairs of the MMT training data, read straight from the
# prepared vlp_mmt data dir (train.en-de.en = [CLS] x [SEP], train.img.npy)
[ -f "$WORK/ckpt/vlp_mmt_data/checkpoint_last.pt" ] || run fairseq-train "$DATA/bert" --source-lang en \
  "${COMMON[@]}" --finetune-from-model "$WORK/ckpt/vlp/checkpoint_last.pt" \
  --lr 1e-4 --lr-scheduler polynomial_decay --warmup-updates 10 --total-num-update "$CONTINUE_UPDATES" \
  --max-update "$CONTINUE_UPDATES" --validate-interval-updates "$CONTINUE_UPDATES" \
  --save-dir "$WORK/ckpt/vlp_mmt_data" 2>&1 | tee "$WORK/vlp_mmt_data.log"

# Translation, stage 1: BERT and FFN(v) from the pre-trained encoder (heads dropped), frozen; the encoder is
# also written as an ordinary Hugging Face BERT ($WORK/vlp-bert)
[ -f "$WORK/ckpt/mmt/checkpoint_last.pt" ] || run fairseq-train "$DATA/bert" --user-dir "$USER_DIR" \
  --task vlp_mmt -s en -t de --arch vlp_mmt_tiny --criterion vlp_mmt_loss --label-smoothing 0.1 \
  --bert-model "$BERT" --image-features "$FEATURES" --max-regions 10 \
  --load-vlp "$WORK/ckpt/vlp_mmt_data/checkpoint_last.pt" --export-vlp-bert "$WORK/vlp-bert" --freeze-bert \
  --optimizer adam --adam-betas "(0.9, 0.98)" --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 50 \
  --max-tokens 2000 --max-update "$MMT_UPDATES" --validate-interval-updates "$MMT_UPDATES" \
  --save-dir "$WORK/ckpt/mmt" --no-epoch-checkpoints --num-workers 0 --seed 1 --log-format json \
  --log-interval 50 $DEVICE_FLAGS 2>&1 | tee "$WORK/mmt.log"

run fairseq-generate "$DATA/bert" --user-dir "$USER_DIR" --task vlp_mmt -s en -t de --bert-model "$BERT" \
  --image-features "$FEATURES" --max-regions 10 --path "$WORK/ckpt/mmt/checkpoint_last.pt" \
  --gen-subset test2016 --beam 5 --max-len-a 1.5 --max-len-b 10 --batch-size 64 --remove-bpe sentencepiece \
  $DEVICE_FLAGS > "$WORK/gen.test2016.txt"
run vlp-mmt-score --generate-output "$WORK/gen.test2016.txt:test2016" --refs-dir "$DATA" --tgt de
