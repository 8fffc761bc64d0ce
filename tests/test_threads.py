"""TensorFlow's thread pools: one thread per op on two cores (keras_kd/cpu.py, set in keras_kd/keras.py), a
user's own setting kept; bench.threads' two settings in child processes, and its table on made-up figures."""
import os
import subprocess
import sys

import pytest

from bench import threads
from keras_kd import cpu
from tests.conftest import REPO

PROBE = ("import os; import keras_kd.keras; "
         "print(os.environ.get('TF_NUM_INTRAOP_THREADS'), os.environ.get('TF_NUM_INTEROP_THREADS'))")


def test_one_thread_per_op_up_to_two_cores_and_tensorflows_pools_above():
    for n in (1, 2):
        assert cpu.thread_defaults(n) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}
    assert cpu.thread_defaults(3) == {} and cpu.thread_defaults(64) == {}
    assert 1 <= cpu.cores() <= (os.cpu_count() or 1)


def _probe(**env) -> list:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=dict(clean, **env), capture_output=True,
                          text=True, check=True).stdout.split()


def test_importing_keras_sets_the_pools_this_machine_gets_and_keeps_a_users():
    expected = cpu.thread_defaults()
    assert _probe() == [expected.get("TF_NUM_INTRAOP_THREADS", "None"),
                        expected.get("TF_NUM_INTEROP_THREADS", "None")]
    assert _probe(TF_NUM_INTRAOP_THREADS="3") == ["3", expected.get("TF_NUM_INTEROP_THREADS", "None")]


@pytest.mark.slow
def test_each_setting_is_timed_in_its_own_process():
    rows, line = threads.main(["--size=32", "--batch=4", "--repeats=1", "--steps=1", "--blocks=1,1,1,1"])
    assert [r["case"] for r in rows] == ["/8 label-only step", "/8 alignment step (spatial head)",
                                         "teacher train step", "/8 \"Ours\" step, teacher online"]
    assert all(r["ratio"] == pytest.approx(r["one_per_op_s"] / r["tensorflow_s"]) for r in rows)
    assert line.startswith("RATIO threads: ")


def test_report_divides_one_thread_per_op_by_tensorflows_pools():
    rows = [threads.row("/8 label-only step", 48, 32, 0.028, 0.046),
            threads.row("teacher train step", 48, 32, 0.31, 0.30)]
    assert rows[0]["ratio"] == pytest.approx(0.028 / 0.046)
    text, line = threads.report(rows)
    assert "| /8 label-only step | 48 | 32 | 0.028 | 0.046 | 0.61 |" in text
    assert line == ("RATIO threads: step time with 1 thread per op (2 inter-op) ÷ with TensorFlow's pools: "
                    "/8 label-only step 0.61, teacher train step 1.03")
