"""Steps of a comparison and the runner that does each one once.

A :class:`Step` is one command line (fairseq-train, fairseq-generate, vlp-mmt-score, ...) with the
files it makes. Commands run inside the work directory and name every path relative to it, or
through a placeholder (``{REPO}``, ``{PYTHON}``, ``{MULTI30K}``, ``{FEATURES}``) filled in when
they run, or written as a shell variable in the per-system scripts.

The :class:`StepRunner` records each finished step in ``WORK/state/<step>.json`` (its command, its
outputs, when it started and finished). A recorded step whose outputs still exist is reused, never
run again, unless a step it needs runs (again) or ran after it started: then it starts over too
(its ``clean`` paths deleted, so a training run does not resume from stale checkpoints). An
unfinished step (no record) is run again with the same command, which for ``fairseq-train`` means
resuming from the ``checkpoint_last.pt`` of its save directory. A step recorded with another
command (the recipe or the budget changed) is an error rather than a silent reuse.

``run(steps, jobs=2)`` runs two steps side by side whenever neither needs the other (one torch thread each on
two cores, say); ``jobs=1`` runs them one after the other, in order.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

from vlp_mmt_fairseq.file_utils import atomic_output

PLACEHOLDER = re.compile(r"\{([A-Z0-9_]+)\}")


class StepError(RuntimeError):
    """A step failed or cannot run; the message names the step and its log."""


@dataclass
class Step:
    """One command of a comparison.

    ``outputs`` are paths (relative to the work directory) that exist once it has finished.
    ``stdout`` captures the command's standard output into that file (written under a temporary
    name and renamed when the command succeeds); ``log`` receives its standard error too (or
    everything, without ``stdout``), appended across resumed attempts. ``clean`` lists what a
    deliberate re-run (:meth:`StepRunner.forget`) deletes first, so that it starts over instead of
    resuming (a training run's save directory and log).
    """

    name: str
    command: List[str]
    outputs: List[str] = field(default_factory=list)
    after: List[str] = field(default_factory=list)
    log: Optional[str] = None
    stdout: Optional[str] = None
    clean: List[str] = field(default_factory=list)


def fill(arg: str, values: Dict[str, str]) -> str:
    """``arg`` with its placeholders replaced by ``values``."""

    def value(match):
        name = match.group(1)
        if name not in values:
            raise StepError(f"no value for placeholder {{{name}}} in {arg!r}")
        return values[name]

    return PLACEHOLDER.sub(value, arg)


def shell_word(arg: str) -> str:
    """``arg`` quoted for bash, its placeholders becoming ``"$NAME"`` variables."""
    if not PLACEHOLDER.search(arg):
        return shlex.quote(arg)
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(arg):
        parts.append(re.sub(r'(["\\$`])', r"\\\1", arg[last: match.start()]))
        parts.append("${" + match.group(1) + "}")
        last = match.end()
    parts.append(re.sub(r'(["\\$`])', r"\\\1", arg[last:]))
    return '"' + "".join(parts) + '"'


def step_dirs(step: Step) -> List[str]:
    """Directories a step writes into that must exist before it runs."""
    return sorted({os.path.dirname(p) for p in (step.log, step.stdout) if p} - {""})


def shell_command(step: Step) -> str:
    """The step as one bash command line, with its redirections (see :func:`step_dirs`)."""
    words = " ".join(shell_word(a) for a in step.command)
    if step.stdout:
        words += f" > {shlex.quote(step.stdout)}"
        if step.log:
            words += f" 2>> {shlex.quote(step.log)}"
    elif step.log:
        words += f" 2>&1 | tee -a {shlex.quote(step.log)}"
    return words


def order_steps(steps: Dict[str, Step], wanted: Iterable[str]) -> List[Step]:
    """``wanted`` steps and everything they need, each once, dependencies first."""
    ordered, seen, visiting = [], set(), set()

    def visit(name: str, needed_by: str):
        if name in seen:
            return
        if name not in steps:
            raise StepError(f"step '{name}' (needed by '{needed_by}') is not defined")
        if name in visiting:
            raise StepError(f"steps depend on each other in a cycle through '{name}'")
        visiting.add(name)
        for dependency in steps[name].after:
            visit(dependency, name)
        visiting.discard(name)
        seen.add(name)
        ordered.append(steps[name])

    for name in wanted:
        visit(name, "the command line")
    return ordered


class StepRunner:
    """Runs steps inside ``work_dir``, each at most once (see the module docstring)."""

    def __init__(self, work_dir: str, values: Dict[str, str], env: Optional[Dict[str, str]] = None,
                 echo=print):
        self.work_dir = os.path.abspath(work_dir)
        self.values = values
        self.env = env
        self.echo = echo
        self.state_dir = os.path.join(self.work_dir, "state")
        self._processes = set()  # the commands running now
        self._lock = threading.Lock()

    def state_path(self, step: Step) -> str:
        return os.path.join(self.state_dir, f"{step.name}.json")

    def record(self, step: Step) -> Optional[dict]:
        """The finished-state record of ``step``, or None."""
        path = self.state_path(step)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise StepError(f"{path}: unreadable step record ({e}); delete it to run the step again") from e

    def is_done(self, step: Step, finished: Dict[str, dict]) -> bool:
        """Whether ``step`` finished before with this very command, after the steps it needs, and its outputs
        are still there. ``finished``: the records of the steps already done in this pass."""
        record = self.record(step)
        if record is None:
            return False
        if record.get("command") != step.command:
            raise StepError(
                f"step '{step.name}' was finished in {self.work_dir} with another command:\n"
                f"  recorded: {' '.join(record.get('command', []))}\n  now:      {' '.join(step.command)}\n"
                f"use another --work-dir, or --redo {step.name} to run it again"
            )
        for dependency in step.after:
            if dependency not in finished or finished[dependency]["finished_at"] > record["started_at"]:
                return False  # what it was made from is about to change, or changed after it ran
        missing = [p for p in step.outputs if not os.path.exists(os.path.join(self.work_dir, p))]
        return not missing

    def changed(self, step: Step) -> bool:
        """Whether ``step`` was recorded with another command than its current one."""
        record = self.record(step)
        return record is not None and record.get("command") != step.command

    def forget(self, step: Step) -> None:
        """Drop the record of ``step`` and delete its ``clean`` paths, so that it runs again from scratch."""
        path = self.state_path(step)
        if os.path.exists(path):
            os.remove(path)
        for relative in step.clean:
            target = os.path.join(self.work_dir, relative)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)

    def run(self, steps: List[Step], jobs: int = 1) -> Dict[str, dict]:
        """Run every unfinished step of ``steps``, each once the steps it needs have finished, at most ``jobs``
        at a time; return the records of all of them.

        ``steps`` come dependencies first (:func:`order_steps`); with ``jobs=1`` they run in that order. When a
        step fails, the running ones finish, nothing new starts, and its :class:`StepError` is raised."""
        finished, pending, running, failure = {}, list(enumerate(steps, 1)), {}, None
        listed = {step.name for step in steps}  # a dependency outside them cannot be waited for
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            try:
                while pending or running:
                    while failure is None and pending and len(running) < max(1, jobs):
                        ready = next((item for item in pending
                                      if all(dependency in finished or dependency not in listed
                                             for dependency in item[1].after)), None)
                        if ready is None:
                            break
                        pending.remove(ready)
                        future = self._start(pool, *ready, len(steps), finished)
                        if future is not None:
                            running[future] = ready[1]
                    if not running:
                        break  # all done, or a step failed and nothing else runs
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        step = running.pop(future)
                        try:
                            future.result()
                        except StepError as e:
                            failure = failure or e
                            continue
                        finished[step.name] = self.record(step)
                        if jobs > 1:
                            self.echo(f"  {step.name}: finished in {finished[step.name]['seconds']:.0f} s")
            except BaseException:
                self._stop_all()  # Ctrl-C or SIGTERM: no step keeps running behind the runner's back
                raise
        if failure is not None:
            raise failure
        return finished

    def _start(self, pool: ThreadPoolExecutor, number: int, step: Step, total: int,
               finished: Dict[str, dict]) -> Optional[Future]:
        """Reuse ``step`` if it is done (its record goes into ``finished``: None comes back), else run it in
        ``pool``."""
        if self.is_done(step, finished):
            self.echo(f"[{number}/{total}] {step.name}: done before, reused")
            finished[step.name] = self.record(step)
            return None
        if self.record(step) is not None:  # made before from inputs that changed since: start over
            self.echo(f"[{number}/{total}] {step.name}: out of date, starting over")
            self.forget(step)
        self.echo(f"[{number}/{total}] {step.name}: running")
        return pool.submit(self._execute, step)

    def plan(self, steps: List[Step], strict: bool = True) -> Dict[str, bool]:
        """Step name -> whether :meth:`run` would reuse it (True) or run it (False).

        With ``strict=False`` a step recorded with another command counts as not done instead of
        raising :class:`StepError`."""
        finished, reused = {}, {}
        for step in steps:
            try:
                reused[step.name] = self.is_done(step, finished)
            except StepError:
                if strict:
                    raise
                reused[step.name] = False
            if reused[step.name]:
                finished[step.name] = self.record(step)
        return reused

    def _execute(self, step: Step) -> None:
        args = [fill(a, self.values) for a in step.command]
        for directory in step_dirs(step):
            os.makedirs(os.path.join(self.work_dir, directory), exist_ok=True)
        self.echo("  + " + " ".join(shlex.quote(a) for a in args))
        started_at = time.time()
        if step.stdout:
            with atomic_output(os.path.join(self.work_dir, step.stdout)) as tmp:
                with open(tmp, "w", encoding="utf-8") as out:
                    self._call(step, args, out)
        else:
            self._call(step, args, None)
        missing = [p for p in step.outputs if not os.path.exists(os.path.join(self.work_dir, p))]
        if missing:
            raise StepError(f"step '{step.name}' exited with 0 but did not write {', '.join(missing)}; "
                            f"log: {self._log_path(step)}")
        self.record_finished(step, started_at)

    def _log_path(self, step: Step) -> Optional[str]:
        return os.path.join(self.work_dir, step.log) if step.log else None

    def _call(self, step: Step, args: List[str], out) -> None:
        """Run ``args``; stdout to ``out`` (or the log), stderr to the log; raise StepError on failure."""
        log_path = self._log_path(step)
        with open(log_path or os.devnull, "a", encoding="utf-8") as log:
            log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(shlex.quote(a) for a in args)}\n")
            log.flush()
            try:
                process = subprocess.Popen(args, cwd=self.work_dir, stdout=out or log, stderr=log, env=self.env)
            except OSError as e:
                raise StepError(f"step '{step.name}': cannot start {args[0]} ({e})") from e
            with self._lock:
                self._processes.add(process)
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._processes.discard(process)
        if code != 0:
            tail = _tail(log_path) if log_path else ""
            raise StepError(f"step '{step.name}' failed with exit code {code}; log: {log_path}\n{tail}")

    def _stop_all(self) -> None:
        """Kill every command still running and wait for it."""
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()

    def record_finished(self, step: Step, started_at: float) -> None:
        """Write the record of ``step``, finished now after starting at ``started_at``."""
        finished_at = time.time()
        record = dict(asdict(step), seconds=round(finished_at - started_at, 1), started_at=started_at,
                      finished_at=finished_at, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        with atomic_output(self.state_path(step)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def python_env(threads: Optional[int] = None) -> Dict[str, str]:
    """The environment for the steps: this interpreter's bin directory first on PATH; ``threads`` torch threads
    per step, if given."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def add_parallel_arguments(parser) -> None:
    """``--threads`` and ``--jobs``, the options of every script that runs steps."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads per step (OMP_NUM_THREADS); 1 helps on a machine shared with other "
                        "jobs (default: torch's own choice)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N steps side by side when neither needs the other (default 1); with "
                        "--threads 1, as many as the cores")


def stop_on_sigterm() -> None:
    """SIGTERM ends the running step too (as Ctrl-C does), so nothing keeps writing into the work dir."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
