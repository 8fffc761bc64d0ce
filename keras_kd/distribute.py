"""The tf.distribute strategy of a run: the distributed engine is `fit` under one of these.

Every worker of a multi-worker run executes the same command; TF_CONFIG tells each its place. Only the
chief writes the files a user reads (stage weights, results, exports); the other workers write their
copies under a scratch directory, because saving weights reads synchronized variables, a collective that
every worker must join (keras.io, "Multi-worker training with Keras": save on all workers).
"""
from __future__ import annotations

import json
import os

from keras_kd.keras import tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


class StrategyError(RuntimeError):
    """The requested strategy cannot run here; the message says why."""


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: Mirrored over all GPUs when there are several, one device with one GPU, and TF's default
    strategy on a CPU-only machine: OneDeviceStrategy("/cpu:0") made every train step 2.7x slower on
    2 cores (measured, docs/recipe.md), the default strategy runs the same `fit` at full speed.

    multi_worker reads the cluster from TF_CONFIG (every worker runs the same command); tpu connects to the
    TPU named by TPU_NAME (or the local one).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    # MultiWorkerMirroredStrategy must come before anything initializes TF's runtime, listing devices too.
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise StrategyError("--strategy=multi_worker needs TF_CONFIG (one per worker; see README "
                                "'Scaling out', or try it locally with python -m keras_kd.launch)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise StrategyError(f"TF_CONFIG is not valid JSON ({e})") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", ""))
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as e:
            raise StrategyError(f"--strategy=tpu: no TPU reachable ({str(e).splitlines()[0][:160]})") from None
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "auto" and not gpus:
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def worker_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index among the workers (0 on a single machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return 0
    # With an explicit "chief" task, workers count from 1 so that they never share the chief's index.
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return int(resolver.task_id) + (1 if has_chief else 0)


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this worker: those one input pipeline of `distribute_datasets_from_function` feeds."""
    try:
        return max(1, len(strategy.extended.worker_devices))
    except RuntimeError:  # the default strategy: one replica, and it does not say
        return 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes results; other workers' files are scratch."""
    return worker_id(strategy) == 0


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Every worker waits here for all the others (a one-number all-reduce).

    Called at the end of a run, after the chief's export: a worker that left earlier would be reported by
    the cluster's coordination service as crashed while the chief still works.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)
