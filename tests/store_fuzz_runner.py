"""Runs fuzz cases of tests/test_store_fuzz.py, each in its own forked process.

Usage: ``python tests/store_fuzz_runner.py CASES.json RESULTS.json``. The runner imports the plugin once, then
forks one child per case, so a crash of libhdf5 (a signal) or a hang ends that case only and is counted as such.

A case reads a feature store (``kind: store``) or converts detector output (``kind: tsv`` / ``npz``) and is
classified by comparing with the unmodified input:

- ``refused``: a FeatureStoreError / ConversionError whose message names the file, and nothing read differs;
- ``no effect``: everything reads exactly as the original;
- ``different values``: (converters only) a valid store, from input that changed values (TSV and .npz inputs
  carry no checksum of the feature values);
- failures: ``silently wrong`` (values differ without an error), ``unnamed error`` (the message does not name
  the file), ``foreign error`` (another exception type), ``invalid store`` (a converter wrote a store the reader
  refuses), ``output left`` (a refused conversion left a file), ``crash`` (the process died), ``hang``.
"""
import hashlib
import json
import os
import select
import signal
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digest(item) -> str:
    """One image's values, as read, in a few bytes."""
    h = hashlib.sha1()
    for array in (item.features, item.boxes, item.tag_scores):
        h.update(np.ascontiguousarray(array).tobytes())
        h.update(str(array.shape).encode())
    h.update(json.dumps([item.tags, int(item.width), int(item.height)]).encode())
    return h.hexdigest()


def read_store(path: str, keys) -> dict:
    """Everything a reader sees of ``path``: metadata, every key's values or error."""
    from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreError

    out = {"values": {}, "errors": []}
    try:
        store = FeatureStore(path)
        out["meta"] = [store.version, store.feature_dim, store.extractor, sorted(store.keys())]
    except FeatureStoreError as e:
        out["errors"].append(str(e))
        return out
    for key in out["meta"][3] if keys is None else keys:
        try:
            out["values"][key] = digest(store.get(key))
        except FeatureStoreError as e:
            out["errors"].append(str(e))
    store.close()
    return out


def convert(case: dict) -> dict:
    """Run a converter on the case's input; read back what it wrote."""
    from vlp_mmt_fairseq.data.feature_store import FeatureStoreError
    from vlp_mmt_fairseq.features.detector_outputs import ConversionError

    output = case["output"]
    try:
        if case["kind"] == "tsv":
            from vlp_mmt_fairseq.cli.tsv_to_store import convert as run
            run([case["input"]], output, case["vocab"], "float32", "fuzz", progress=False)
        else:
            from vlp_mmt_fairseq.cli.npz_to_store import convert as run
            run(case["input"], output, case["vocab"], "float32", "fuzz", progress=False)
    except (ConversionError, FeatureStoreError) as e:
        return {"values": {}, "errors": [str(e)], "output_left": os.path.exists(output)}
    store = read_store(output, None)  # every key it holds (a truncated TSV may hold fewer)
    return {"values": store["values"], "errors": [], "meta": store.get("meta"),
            "invalid": store["errors"]}


def run_case(case: dict) -> dict:
    return read_store(case["path"], case["keys"]) if case["kind"] == "store" else convert(case)


def isolated(case: dict, timeout: float = 60.0) -> dict:
    """``run_case(case)`` in a forked child: its result, or what killed it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            result = run_case(case)
        except BaseException as e:  # noqa: B902 - every foreign error is a finding
            result = {"foreign": f"{type(e).__name__}: {e}"}
        data = json.dumps(result).encode()
        while data:
            data = data[os.write(write_end, data):]
        os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.time() + timeout
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.time()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return {"died": "hang"}
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not chunks:
        return {"died": f"crash (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status)
                else f"crash (exit {os.WEXITSTATUS(status)})"}
    return json.loads(b"".join(chunks))


def classify(case: dict, result: dict, expected: dict) -> str:
    if "died" in result:
        return result["died"].split(" ")[0]
    if "foreign" in result:
        return "foreign error"
    named = case.get("names", case.get("path") or case.get("input"))
    if any(not (message.startswith(named) or named in message) for message in result["errors"]):
        return "unnamed error"
    if result.get("output_left"):
        return "output left"
    if result.get("invalid"):
        return "invalid store"
    differs = any(expected["values"].get(key) != value for key, value in result["values"].items())
    if result["errors"]:
        return "silently wrong" if differs and case["kind"] == "store" else "refused"
    if case["kind"] != "store" and (differs or result.get("meta") != expected.get("meta")):
        return "different values"
    if differs or result.get("meta") != expected.get("meta") or set(result["values"]) != set(expected["values"]):
        return "silently wrong"
    return "no effect"


def import_without_fairseq() -> None:
    """The store and converter modules need neither fairseq nor torch; importing the package's ``__init__``
    (fairseq's registration) would make every fork ten times as costly, so the package is entered without it."""
    import types

    package = types.ModuleType("vlp_mmt_fairseq")
    package.__path__ = [os.path.join(REPO, "vlp_mmt_fairseq")]
    sys.modules["vlp_mmt_fairseq"] = package


def main(cases_path: str, results_path: str) -> None:
    import_without_fairseq()
    import vlp_mmt_fairseq.cli.npz_to_store  # noqa: F401  (import once, before forking)
    import vlp_mmt_fairseq.cli.tsv_to_store  # noqa: F401

    spec = json.load(open(cases_path))
    expected = {name: isolated(case) for name, case in spec["originals"].items()}
    for name, result in expected.items():
        if "died" in result or "foreign" in result or result["errors"] or result.get("invalid"):
            raise SystemExit(f"the original {name} input does not read cleanly: {result}")
    results = []
    for case in spec["cases"]:
        result = isolated(case)
        outcome = classify(case, result, expected[case["original"]])
        results.append({"id": case["id"], "kind": case["kind"], "class": case["class"], "outcome": outcome,
                        "detail": (result.get("errors") or [result.get("foreign") or result.get("died") or ""])[0]
                        if outcome != "no effect" else ""})
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
