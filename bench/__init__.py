"""Benchmarks of keras-kd: every cost as a ratio measured within one run (bench/RESULTS.md).

    python -m bench.train_step        plain student step vs distill step (online teacher) vs cached teacher
    python -m bench.input_pipeline    TFRecord → augmented batch images/s ÷ the train step's images/s
    python -m bench.flops             achieved GFLOP/s of the train step ÷ dense matmul GFLOP/s
    python -m bench.precision         XLA (jit_compile) and mixed precision: speed and metric after short training
    python -m bench.export_latency    exported students: size and LiteRT latency vs the teacher; SavedModel serving
    python -m bench.scaling           step time vs width divisor and input size, against the FLOP model
    python -m bench.breakdown         where a train step's time goes (its parts timed alone)
    python -m bench.optimizations     before/after of each optimization tried
    python -m bench.archs             ResNet-50/d vs MobileFaceNet, MobileNetV3: train step and int8 LiteRT vs FLOPs
    python -m bench.run [--only=a,b] [--wait]   several of them, each in its own process

The machines these run on are shared and noisy: nothing here asserts a time. Each benchmark prints the
machine, versions, time and load average first and last, its table, and its headline ratio on the last line.
Variants compared in one table are measured in alternating rounds (A B C A B C ...), so load that comes
and goes hits them alike; a figure is the median over rounds.
"""
