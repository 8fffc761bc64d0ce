"""Local multi-worker launcher: N processes on 127.0.0.1, each with its TF_CONFIG.

    python -m keras_kd.launch --workers=2 -- main.py --task=classify --preset=smoke

It is the same run as on N machines (README, "Scaling out"): every worker executes the same command with
`--strategy=multi_worker` (added when absent) and a TF_CONFIG naming the cluster and its own index.
Worker output is streamed with a "[worker i]" prefix. When one worker fails the others are stopped
(MultiWorkerMirroredStrategy would otherwise wait for it forever) and its exit code is returned.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

from keras_kd import cpu


def free_ports(n: int) -> List[int]:
    """n distinct ports the OS reports free on 127.0.0.1 (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(workers: Sequence[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        # Lines a worker already tags as its own (keras_kd's log does) are not tagged twice.
        out.write(line if line.startswith(prefix) else prefix + line)
        out.flush()


def launch(command: Sequence[str], workers: int = 2, python: Optional[str] = None,
           env: Optional[dict] = None, out=None) -> int:
    """Runs `python command...` as `workers` local workers; returns 0 when all succeed."""
    out = out or sys.stdout
    cmd = [python or sys.executable, *command]
    if not any(a.startswith("--strategy") for a in command):
        cmd.append("--strategy=multi_worker")
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    procs, pumps = [], []
    for i in range(workers):
        e = dict(env if env is not None else os.environ, TF_CONFIG=tf_config(addresses, i), PYTHONUNBUFFERED="1")
        # Each worker gets its share of the cores it may run on: two TF processes each using all cores thrash.
        e.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cpu.cores() // workers)))
        p = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[worker {i}] ", out), daemon=True)
        t.start()
        pumps.append(t)
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                code = failed[0].returncode
                out.write(f"[launch] worker {procs.index(failed[0])} exited with {code}; stopping the others\n")
                _stop(procs)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        code = 130
    for p in procs:
        p.wait()
    for t in pumps:
        t.join(timeout=5)
    if code == 0:
        code = next((p.returncode for p in procs if p.returncode != 0), 0)
    return code


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_kd.launch", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--workers=N] -- main.py [flags ...]")
    parser.add_argument("--workers", type=int, default=2, help="number of local worker processes (≥ 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="script and its flags, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not command:
        parser.error("nothing to launch: give the script after --, e.g. -- main.py --task=classify")
    if not os.path.exists(command[0]):
        parser.error(f"{command[0]}: no such script")
    return launch(command, args.workers)


if __name__ == "__main__":
    sys.exit(main())
