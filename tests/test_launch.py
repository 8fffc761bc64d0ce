"""The local multi-worker launcher: ports, TF_CONFIG, failure handling (no TensorFlow needed)."""
import io
import json

import pytest

from keras_kd import launch


def test_free_ports_are_distinct_and_usable():
    ports = launch.free_ports(4)
    assert len(set(ports)) == 4 and all(1024 <= p < 65536 for p in ports)


def test_tf_config_names_the_cluster_and_the_worker():
    cfg = json.loads(launch.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert cfg == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}


def test_each_worker_gets_its_own_tf_config_and_strategy(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import json, os, sys\n"
                      "print(json.loads(os.environ['TF_CONFIG'])['task']['index'], sys.argv[1:])\n")
    out = io.StringIO()
    assert launch.launch([str(script), "--x=1"], workers=3, out=out) == 0
    lines = sorted(out.getvalue().splitlines())
    assert lines == [f"[worker {i}] {i} ['--x=1', '--strategy=multi_worker']" for i in range(3)]



def test_workers_share_the_cores_the_process_may_run_on(tmp_path, monkeypatch):
    import os
    script = tmp_path / "threads.py"
    script.write_text("import os\nprint(os.environ['TF_NUM_INTRAOP_THREADS'])\n")
    monkeypatch.setattr(launch.cpu, "cores", lambda: 8)  # a cpuset of 8 cores, whatever os.cpu_count() says
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    out = io.StringIO()
    assert launch.launch([str(script)], workers=2, env=env, out=out) == 0
    assert sorted(out.getvalue().splitlines()) == ["[worker 0] 4", "[worker 1] 4"]
    out = io.StringIO()  # the user's own setting is kept
    assert launch.launch([str(script)], workers=2, env=dict(env, TF_NUM_INTRAOP_THREADS="3"), out=out) == 0
    assert sorted(out.getvalue().splitlines()) == ["[worker 0] 3", "[worker 1] 3"]

def test_a_failing_worker_stops_the_others_and_its_code_is_returned(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import json, os, sys, time\n"
                      "i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
                      "sys.exit(3) if i == 1 else time.sleep(60)\n")
    out = io.StringIO()
    assert launch.launch([str(script), "--strategy=multi_worker"], workers=2, out=out) == 3
    assert "[launch] worker 1 exited with 3; stopping the others" in out.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["--workers=0", "--", "main.py"], "--workers must be at least 1"),
    (["--workers=2"], "nothing to launch"),
    (["--", "no_such_script.py"], "no_such_script.py: no such script"),
])
def test_bad_launcher_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
