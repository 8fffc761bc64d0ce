"""The registry of tasks: the only place that maps a task name to its behaviour."""
from keras_kd.tasks.align import Align
from keras_kd.tasks.base import Stage, Task
from keras_kd.tasks.classify import Classify
from keras_kd.tasks.verify import Verify

TASKS = {t.name: t for t in (Classify(), Align(), Verify())}

__all__ = ["TASKS", "Stage", "Task"]
