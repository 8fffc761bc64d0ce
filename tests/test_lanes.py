"""keras_kd.lanes: the order of a plan's stages, the two lanes' schedule (with a stand-in child process and
Runner), a failing child, and when lanes are off. End to end: tests/test_main.py's runs on 2 cores."""
import sys
import time
from types import SimpleNamespace

import pytest

from keras_kd import lanes
from keras_kd.config import Config

CHILD = """import sys, time
log, mode = sys.argv[1], sys.argv[2]
print("@lanes ready", flush=True)
for line in sys.stdin:
    task, name = line.split()
    if mode == "fail":
        print("error: StageError: boom", flush=True)
        print(f"@lanes failed {task} {name}", flush=True)
        sys.exit(1)
    with open(log, "a") as f:
        f.write(f"start child {task}/{name}\\n")
    time.sleep(0.3)
    with open(log, "a") as f:
        f.write(f"end child {task}/{name}\\n")
    print(f"@lanes done {task} {name}", flush=True)
"""


def S(task, name, init_from=None, teacher=None):
    return SimpleNamespace(task=task, name=name, needs=[d for d in (init_from, teacher) if d is not None])


# The align plan's shape: teachers, a Pretrain chain and a Distill chain through classification students.
STAGES = [S("classify", "teacher"), S("align", "teacher", ("classify", "teacher")),
          S("align", "pre"), S("align", "pre_a0b1", ("align", "pre"), ("align", "teacher")),
          S("classify", "label"), S("classify", "label_soft", ("classify", "label"), ("classify", "teacher")),
          S("align", "dis_a0b1", ("classify", "label_soft"), ("align", "teacher"))]
PLAN = {"align": ["teacher", "pre", "pre_a0b1", "dis_a0b1"]}


class FakeRunner:
    """What lanes reads of a Runner; `ensure` trains in 0.3 s and checks its needs were read first. Its first
    stage waits until the child has taken one, so both lanes get work however loaded the machine is."""

    def __init__(self, log, cfg=None):
        self.cfg, self.log_path, self.lines = cfg or Config(), log, []
        self.stages = {(s.task, s.name): s for s in STAGES}
        self._records, self.external = {}, None

    def stage(self, task, name):
        return self.stages[task, name]

    def plan(self, task):
        return {n: self.stages[task, n] for n in PLAN[task]}

    def meta(self, task):
        return {}

    def saved(self, stage):
        return False

    def log(self, msg):
        self.lines.append(msg)

    def recorded(self, task, name):
        return (task, name) in self._records

    def adopt(self, task, name):
        for dep in lanes.needs(self, (task, name)):
            self.adopt(*dep)
        self._records.setdefault((task, name), {"by": "child"})

    def ensure(self, task, name):
        assert all(d in self._records for d in lanes.needs(self, (task, name)))
        if not self._records:  # the first stage waits for the child's first move, however slowly it starts
            for _ in range(600):
                if "start child" in open(self.log_path).read() or any("boom" in line for line in self.lines):
                    break
                time.sleep(0.1)
        with open(self.log_path, "a") as f:
            f.write(f"start parent {task}/{name}\n")
        time.sleep(0.3)
        with open(self.log_path, "a") as f:
            f.write(f"end parent {task}/{name}\n")
        self._records[task, name] = {"by": "parent"}


def _run(tmp_path, mode):
    script, log = tmp_path / "child.py", tmp_path / "log.txt"
    script.write_text(CHILD)
    log.write_text("")
    runner = FakeRunner(str(log))
    refs = lanes.order(runner, "align")
    lanes.Lanes(runner, refs, list(refs), command=[sys.executable, str(script), str(log), mode]).run()
    return runner, refs, [line.split() for line in log.read_text().splitlines()]


def test_order_puts_each_stage_after_its_init_and_teacher():
    refs = lanes.order(FakeRunner("unused"), "align")
    assert refs == [("classify", "teacher"), ("align", "teacher"), ("align", "pre"), ("align", "pre_a0b1"),
                    ("classify", "label"), ("classify", "label_soft"), ("align", "dis_a0b1")]


def test_two_lanes_train_every_stage_once_each_after_its_needs(tmp_path):
    runner, refs, events = _run(tmp_path, "ok")
    starts = [(lane, stage) for what, lane, stage in events if what == "start"]
    assert sorted(stage for _, stage in starts) == sorted(f"{t}/{n}" for t, n in refs)  # each once
    assert {lane for lane, _ in starts} == {"parent", "child"}
    ended = []
    for what, lane, stage in events:
        if what == "start":
            assert all(f"{t}/{n}" in ended for t, n in lanes.needs(runner, tuple(stage.split("/"))))
        else:
            ended.append(stage)
    assert set(runner._records) == set(refs)  # the child's stages read back as the Runner's own
    assert {runner._records[tuple(s.split("/"))]["by"] for lane, s in starts if lane == "child"} == {"child"}


def test_a_failing_child_leaves_its_stages_to_this_process(tmp_path):
    runner, refs, events = _run(tmp_path, "fail")
    assert sorted(stage for what, lane, stage in events if what == "start" and lane == "parent") == sorted(
        f"{t}/{n}" for t, n in refs)
    assert "error: StageError: boom" in runner.lines
    assert any(line.startswith("[lanes] the child stopped (") for line in runner.lines)


@pytest.mark.parametrize("change, cores, why", [
    ({}, 2, None),
    ({"parallel_stages": "off"}, 2, "--parallel_stages=off"),
    ({"strategy": "mirrored"}, 2, "not a CPU-only run"),
    ({"teacher_cache": "memory"}, 2, "--teacher_cache"),
    ({}, 4, "4 cores: measured on 2 only"),
])
def test_when_lanes_are_off(change, cores, why, monkeypatch):
    monkeypatch.setattr(lanes.cpu, "cores", lambda: cores)
    got = lanes.why_not(FakeRunner("unused", Config().replace(**change)))
    assert got == why if why is None else why in got
