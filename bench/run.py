"""Runs several benchmarks, each in its own Python process (mixed-precision policies, XLA and thread pools
do not leak between them), printing each one's output and collecting the RATIO lines at the end.

    python -m bench.run                                   all of them, default settings
    python -m bench.run --only=train_step,flops           some of them
    python -m bench.run --wait --out=bench/out            first wait (≤ 10 min) for the 1-min load average
                                                          to fall below --max_load; keep logs and JSON
    python -m bench.run --only=train_step -- --widths=8   arguments after -- go to every benchmark run
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BENCHES = ("train_step", "input_pipeline", "flops", "precision", "export_latency", "scaling", "breakdown",
           "optimizations", "conv_grad", "archs", "int8_ops", "teacher_precision", "threads")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for_quiet(max_load: float, max_wait_s: float) -> None:
    t0 = time.time()
    while os.getloadavg()[0] > max_load and time.time() - t0 < max_wait_s:
        print(f"# waiting: 1-min load average {os.getloadavg()[0]:.2f} > {max_load}", flush=True)
        time.sleep(30)
    print("# starting at load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    p.add_argument("--wait", action="store_true", help="wait for a quieter machine first (at most 10 min)")
    p.add_argument("--max_load", type=float, default=2.5)
    p.add_argument("--out", default="", help="directory for each benchmark's log and JSON figures")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        p.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(BENCHES)}")
    if args.wait:
        wait_for_quiet(args.max_load, 600)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    ratios, failed = [], []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}", *extra]
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            cmd.append(f"--json={os.path.join(args.out, name + '.json')}")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = open(os.path.join(args.out, name + ".log"), "w") if args.out else None
        for line in proc.stdout:
            if line.startswith(("WARNING:", "I0000", "W0000")) or "oneDNN custom operations" in line \
                    or "cpu_feature_guard" in line or line.startswith("To enable the following instructions"):
                continue
            sys.stdout.write(line)
            if log:
                log.write(line)
            if line.startswith("RATIO "):
                ratios.append(line.rstrip())
        if log:
            log.close()
        if proc.wait() != 0:
            failed.append(name)
    print("\n" + "\n".join(ratios))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
