"""Two lanes: stages that do not need each other trained side by side, one in this process and one in a child.

On two cores a small student leaves the second core idle a third of the time, and two processes use it where
`tf.distribute` across the cores does not (docs/performance.md). `Runner.run` hands this module the stages it
would train one after another; each lane takes the first one, in the Runner's order, whose init and teacher
are saved (the child is told which over its stdin). A stage seeds itself, so the lane that trains it changes
nothing beyond the run-to-run noise of multi-threaded training. A child that fails hands its stage back to
this process, which trains it and reports any error as usual.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Sequence

from keras_kd import cpu

MARK = "@lanes "  # the child's lines to the parent; every other line it prints is forwarded as it is


def why_not(runner) -> Optional[str]:
    """None when the Runner's stages may run in two lanes, else why not."""
    from keras_kd.keras import tf
    cfg = runner.cfg
    if cfg.parallel_stages == "off":
        return "--parallel_stages=off"
    if cfg.strategy != "auto" or tf.config.list_logical_devices("GPU"):
        return "not a CPU-only run of one process (--strategy, GPUs)"
    if cpu.cores() != cpu.FEW_CORES:
        return f"{cpu.cores()} cores: measured on {cpu.FEW_CORES} only"
    if runner.external is not None or cfg.teacher_cache != "off":
        return "a brought teacher or --teacher_cache (files both lanes would write)"
    return None


def order(runner, task: str) -> List[tuple]:
    """Every stage `Runner.run(task)` reaches, each after its init and teacher, in the order it trains them."""
    seen, out = set(), []

    def visit(ref):
        if ref not in seen:
            seen.add(ref)
            for dep in needs(runner, ref):
                visit(dep)
            out.append(ref)

    for name in runner.plan(task):
        visit((task, name))
    return out


def needs(runner, ref) -> List[tuple]:
    return runner.stage(*ref).needs


def train(runner, task: str) -> None:
    """Trains the stages of `task` that are not saved yet, in two lanes, when `why_not` allows and two or more
    are left; afterwards every one of them is in the Runner's records, as if it had trained them itself."""
    for t in {"classify", task}:  # the data exist (synthetic ones written) before a child reads them
        runner.meta(t)
    refs = order(runner, task)
    todo = [r for r in refs if not runner.recorded(*r)
            and (runner.cfg.overwrite or not runner.saved(runner.stage(*r)))]
    if len(todo) < 2 or why_not(runner):
        return
    for ref in refs:  # the saved ones read back (and checked) first, as one lane would
        if ref not in todo:
            runner.ensure(*ref)
    runner.log(f"[lanes] {len(todo)} stages to train in two lanes, this process and a child process "
               "(--parallel_stages=off: one after another)")
    Lanes(runner, refs, todo).run()


class Lanes:
    def __init__(self, runner, refs: List[tuple], todo: List[tuple], command: Sequence[str] = ()):
        self.runner, self.refs = runner, refs
        self.command = list(command) or [sys.executable, "-m", "keras_kd.lanes"]  # + the Config's pickle
        self.done = {r for r in refs if r not in todo}
        self.owner: Dict[tuple, str] = {}  # ref -> "parent" | "child", while training and after
        self.by_child: List[tuple] = []
        self.cond = threading.Condition()
        self.child_idle = False
        self.child: Optional[subprocess.Popen] = None

    def _ready(self) -> Optional[tuple]:
        return next((r for r in self.refs if r not in self.done and r not in self.owner
                     and all(d in self.done for d in needs(self.runner, r))), None)

    def _feed(self) -> None:
        """Under the lock: the idle child gets the first ready stage."""
        ref = self._ready() if self.child_idle and self.child is not None else None
        if ref is not None:
            self.owner[ref], self.child_idle = "child", False
            self.child.stdin.write(f"{ref[0]} {ref[1]}\n")
            self.child.stdin.flush()

    def _lost_child(self, why: str) -> None:
        """Under the lock: the child's stage (if any) goes back to this process."""
        if self.child is not None:
            self.runner.log(f"[lanes] the child stopped ({why}); this process trains the rest")
        self.child, self.child_idle = None, False
        for ref, who in list(self.owner.items()):
            if who == "child" and ref not in self.done:
                del self.owner[ref]

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if not line.startswith(MARK):
                self.runner.log(line.rstrip("\n"))
                continue
            word, *ref = line[len(MARK):].split()
            with self.cond:
                if word == "ready":
                    self.child_idle = True
                elif word == "done":
                    self.done.add(tuple(ref))
                    self.by_child.append(tuple(ref))
                    self.child_idle = True
                else:  # failed: its error line went before
                    self._lost_child(f"{'/'.join(ref[:2])} failed")
                self._feed()
                self.cond.notify_all()
        proc.wait()
        with self.cond:
            if self.child is proc:
                self._lost_child(f"exit code {proc.returncode}")
            self.cond.notify_all()

    def run(self) -> None:
        fd, path = tempfile.mkstemp(prefix="keras-kd-lane-", suffix=".pickle")
        cfg = self.runner.cfg
        with os.fdopen(fd, "wb") as f:  # the child's stage lines only: two lanes' progress bars would interleave
            pickle.dump(cfg.replace(verbose=0), f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.Popen(self.command + [path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.child = proc
        pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        pump.start()
        # This lane prints one line per epoch meanwhile: the child's lines would break into a progress bar.
        self.runner.cfg = cfg.replace(verbose=2) if cfg.verbose == 1 else cfg
        try:
            while True:
                with self.cond:
                    ref = self._ready()
                    while ref is None and len(self.done) < len(self.refs):
                        self.cond.wait()
                        ref = self._ready()
                    if ref is None:
                        break
                    self.owner[ref] = "parent"
                for dep in needs(self.runner, ref):  # what the child trained, read as this Runner's own
                    self.runner.adopt(*dep)
                self.runner.ensure(*ref)
                with self.cond:
                    self.done.add(ref)
                    self._feed()
        finally:
            self.runner.cfg = cfg
            with self.cond:
                child, self.child = self.child, None
            if child is not None and child.poll() is None:
                child.stdin.close()
                try:
                    child.wait(timeout=None if len(self.done) == len(self.refs) else 5)
                except subprocess.TimeoutExpired:
                    child.kill()
            pump.join(timeout=10)
            os.unlink(path)
        for ref in self.by_child:
            self.runner.adopt(*ref)


def _die_with_parent() -> None:
    try:  # Linux: SIGTERM when the parent dies, so a killed run leaves no lane training
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child(path: str) -> int:
    """The second lane: trains each stage named on stdin, whose init and teacher are saved."""
    _die_with_parent()
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from keras_kd.stages import Runner
    with open(path, "rb") as f:
        runner = Runner(pickle.load(f))
    print(MARK + "ready", flush=True)
    for line in sys.stdin:
        ref = tuple(line.split())
        try:
            for dep in needs(runner, ref):
                runner.adopt(*dep)
            runner.ensure(*ref)
        except Exception as e:  # noqa: BLE001 - any failure hands the stage back to the parent
            print(f"error: {type(e).__name__}: {e}", flush=True)
            print(f"{MARK}failed {ref[0]} {ref[1]}", flush=True)
            return 1
        print(f"{MARK}done {ref[0]} {ref[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1]))
