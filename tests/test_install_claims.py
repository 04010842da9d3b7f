"""setup.py's claims (Python version, fairseq distribution, transformers lower bound) against what the code imports."""
import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

#: (module, name) the plugin imports -> (distribution, the first release that has it, where that is recorded)
FIRST_RELEASE_WITH = {
    ("transformers.masking_utils", "create_bidirectional_mask"): ("transformers", "5.0.0"),  # 4.57.6 lacks it
    ("fairseq.models.transformer.transformer_decoder_aug", "AugTransformerDecoderBase"): ("fairseq-fixed", "0.12.3"),
    ("fairseq.modules.transformer_layer_aug", "AugTransformerDecoderLayerBase"): ("fairseq-fixed", "0.12.3"),
}


def setup_keywords():
    """The keyword arguments of setup() in setup.py, as literals."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
            if kw.arg in ("python_requires", "install_requires")}


def plugin_imports():
    """Every ``from X import Y`` of the plugin's code, as (X, Y)."""
    found = set()
    for path in (REPO / "vlp_mmt_fairseq").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.update((node.module, alias.name) for alias in node.names)
    return found


def test_declared_bounds_match_what_the_code_imports():
    keywords = setup_keywords()
    requirements = {Requirement(r).name: Requirement(r) for r in keywords["install_requires"]}
    # fairseq 0.12.2 lacks the *_aug modules that the BERT-fused model imports: only fairseq-fixed, on every Python
    assert "fairseq" not in requirements, "fairseq 0.12.2 does not have transformer_decoder_aug / transformer_layer_aug"
    assert requirements["fairseq-fixed"].marker is None
    # fairseq-fixed, the only fairseq the plugin runs on, needs Python 3.11; the declared bound says so
    python = SpecifierSet(keywords["python_requires"])
    assert "3.10" not in python and "3.11" in python, keywords["python_requires"]
    imported = plugin_imports()
    for (module, name), (distribution, first) in FIRST_RELEASE_WITH.items():
        assert (module, name) in imported, f"the code no longer imports {module}.{name}: update this table"
        spec = requirements[distribution].specifier
        lowest = min((Version(s.version) for s in spec if s.operator in (">=", "==", "~=")), default=None)
        assert lowest is not None and lowest >= Version(first), (
            f"{distribution}{spec} allows versions without {module}.{name} (first in {first})"
        )
        assert Version(importlib.metadata.version(distribution)) in spec
        assert hasattr(importlib.import_module(module), name), f"installed {distribution} lacks {module}.{name}"


def test_running_python_is_within_the_declared_bound():
    python = SpecifierSet(setup_keywords()["python_requires"])
    assert re.match(r"\d+\.\d+", sys.version).group(0) in python
