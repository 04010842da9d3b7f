"""The plugin's own errors, and how they reach the user: as one line, ``error: <message>``, exit code 1.

Every error the plugin raises about its input (a feature store, a checkpoint, an option, a file) derives from
:class:`PluginError`; its message names the file, key or option at fault. :func:`install_excepthook` (applied when
the package is imported) prints such an error as one line instead of a traceback, also when it comes back wrapped
from a DataLoader worker ("Caught FeatureStoreError in DataLoader worker process 0 ...") or from a distributed
worker (torch.multiprocessing's ProcessRaisedException), and when it is a ``ValueError`` raised by the plugin's own
code. Every other error keeps its traceback; ``VLP_MMT_DEBUG=1`` keeps it for all.
"""
import os
import re
import sys
from typing import Optional

#: set to 1 to see the full traceback of every error, the plugin's own included
DEBUG_ENV = "VLP_MMT_DEBUG"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: the last line of a formatted traceback: ``module.Class: message``
_LAST_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$")


class PluginError(Exception):
    """A problem with the user's input that the plugin detected; the message names what is at fault."""


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _raised_by_plugin(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is the plugin's own code."""
    tb, filename = exc.__traceback__, None
    while tb is not None:
        filename, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return filename is not None and _in_package(filename)


def _plugin_class(qualified_name: str) -> bool:
    """Whether ``module.Class`` (from a traceback's text) names a :class:`PluginError` of the plugin."""
    module, _, name = qualified_name.rpartition(".")
    if not module.startswith("vlp_mmt_fairseq"):
        return False
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and issubclass(cls, PluginError)


def _from_traceback_text(text: str) -> Optional[str]:
    """The message of a plugin error in a formatted traceback (what DataLoader and spawn workers send back)."""
    lines = [line for line in text.rstrip().splitlines() if line.strip()]
    frames = [line for line in lines if line.lstrip().startswith('File "')]
    # the error line is the last ``Type: message`` line that starts a line (messages may span lines)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith((" ", "\t")):
            continue
        match = _LAST_LINE.match(lines[index])
        if match is None:
            continue
        name, message = match.groups()
        last_file = frames[-1].split('"')[1] if frames else ""
        if _plugin_class(name) or (name in ("ValueError", "builtins.ValueError") and _in_package(last_file)):
            return " ".join([message] + [line.strip() for line in lines[index + 1:]])
        return None
    return None


def one_line_message(exc: BaseException) -> Optional[str]:
    """The one-line message for ``exc`` if it is the plugin's own error (possibly wrapped by a worker), else None."""
    context = exc.__context__
    if type(exc) is Exception and str(exc).startswith("Cannot load model parameters") and context is not None:
        return one_line_message(context)  # fairseq's trainer hides why a checkpoint did not load behind this
    if isinstance(exc, PluginError) or (type(exc) is ValueError and _raised_by_plugin(exc)):
        text = str(exc)
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:  # torch's DataLoader ExceptionWrapper
            return _from_traceback_text(text)
        return " ".join(text.split("\n")) if text else type(exc).__name__
    if type(exc).__name__ == "ProcessRaisedException" or (str(exc).startswith("Caught ")
                                                          and "\nOriginal Traceback" in str(exc)):
        return _from_traceback_text(str(exc))
    return None


def run_main(main, interrupted: Optional[str] = None) -> None:
    """A console script's entry point: ``main()``, exiting with its status when non-zero; a plugin error as one
    line, exit status 1.

    ``interrupted``: the message for Ctrl-C (default: Python's own KeyboardInterrupt).
    """
    try:
        status = main()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        sys.exit(interrupted)
    except Exception as e:
        message = None if os.environ.get(DEBUG_ENV, "") not in ("", "0") else one_line_message(e)
        if message is None:
            raise
        sys.exit(f"error: {message}")
    if status:
        sys.exit(status)


def excepthook(exc_type, exc, tb, _default=sys.__excepthook__):
    """Print the plugin's own errors as ``error: <message>``; everything else as Python does."""
    message = None if os.environ.get(DEBUG_ENV, "") not in ("", "0") else one_line_message(exc)
    if message is None:
        _default(exc_type, exc, tb)
        return
    print(f"error: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make uncaught plugin errors one line (see the module's docstring); idempotent."""
    previous = sys.excepthook
    if getattr(previous, "_vlp_mmt_one_line", False):
        return

    def hook(exc_type, exc, tb):
        excepthook(exc_type, exc, tb, _default=previous)

    hook._vlp_mmt_one_line = True
    sys.excepthook = hook
