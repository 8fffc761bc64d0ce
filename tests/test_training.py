"""The optimizer, schedule and training loop of a stage (keras_kd/training.py) and the strategy a CPU run gets."""
import json

import numpy as np
import pytest

from keras_kd import distribute, training
from keras_kd.config import Config
from keras_kd.keras import keras, tf


def _rates(cfg, lr=1.0, steps=10, epochs=4):
    s = training.schedule(cfg, lr, steps, epochs)
    return np.array([float(s(i)) if callable(s) else s for i in range(steps * epochs)])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    r = _rates(Config(lr_schedule="cosine", warmup_epochs=1))
    assert r[0] == 0 and np.all(np.diff(r[:10]) > 0)           # linear warm-up over one epoch
    assert r[10] == pytest.approx(1.0)                          # the peak
    assert np.all(np.diff(r[10:]) < 0) and r[-1] < 0.01         # cosine down to ~0
    assert _rates(Config(lr_schedule="cosine", warmup_epochs=0))[0] == pytest.approx(1.0)  # no warm-up: starts at the peak


def test_step_schedule_is_the_papers():
    r = _rates(Config(lr_schedule="step", lr_decay_epochs=2, lr_decay_factor=0.1))
    np.testing.assert_allclose(r[[0, 20, 21, 39]], [1.0, 1.0, 0.1, 0.1], rtol=1e-6)  # Keras: after the bound


@pytest.mark.parametrize("name, cls", [("sgd", keras.optimizers.SGD), ("adamw", keras.optimizers.AdamW)])
def test_weight_decay_skips_biases_and_batch_norm(name, cls):
    """Decay shrinks kernels; batch-norm γ/β and biases stay (zero gradient, so only decay could move them)."""
    opt = training.optimizer(Config(optimizer=name, lr_schedule="step", weight_decay=0.5), 0.1, 10, 1)
    assert isinstance(opt, cls)
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,)), keras.layers.BatchNormalization()])
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        moved = not np.allclose(v.numpy(), before[v.name])
        assert moved == ("kernel" in v.name), v.name


def test_unknown_optimizer_or_schedule_is_refused():
    with pytest.raises(ValueError, match="optimizer"):
        training.optimizer(Config(optimizer="lion"), 0.1, 10, 1)
    with pytest.raises(ValueError, match="lr_schedule"):
        training.schedule(Config(lr_schedule="poly"), 0.1, 10, 1)


def test_auto_strategy_on_cpu_is_the_default_one():
    """OneDeviceStrategy("/cpu:0") made train steps 2.7x slower on 2 cores (docs/recipe.md)."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert distribute.get_strategy("auto") is tf.distribute.get_strategy()
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)


def test_weight_decay_skips_every_batch_norm_and_bias_of_a_resnet_with_every_head():
    """The exclusion goes by variable name: no kernel of the real network may match it, no γ/β/bias escape it."""
    from keras_kd.models import resnet

    model = resnet.build_model(8, 32, 10, ("landmarks", "embedding"), 16, landmark_head="spatial")
    spared = {id(v) for layer in model.layers for v in layer.trainable_weights
              if isinstance(layer, keras.layers.BatchNormalization) or v is getattr(layer, "bias", None)}
    assert 0 < len(spared) < len(model.trainable_variables)
    for name in training.OPTIMIZERS:
        opt = training.optimizer(Config(optimizer=name, lr_schedule="step", weight_decay=0.5), 0.1, 10, 1)
        before = [v.numpy().copy() for v in model.trainable_variables]
        opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
        for v, old in zip(model.trainable_variables, before):
            moved = not np.array_equal(v.numpy(), old)
            assert moved == (id(v) not in spared and bool(old.any())), (name, v.name)


def test_verification_batches_that_replicas_would_split_mid_identity_are_refused(tmp_path):
    """Checked where the strategy is known, before anything trains (a stand-in for 3 replicas)."""
    from keras_kd.stages import Runner, StageError

    class ThreeReplicas:
        num_replicas_in_sync = 3

    cfg = Config(model_dir=str(tmp_path), students=(8,), ids_per_batch=4, images_per_id=2)
    runner = Runner(cfg, ThreeReplicas(), log=lambda _: None)
    with pytest.raises(StageError, match=r"^verify plan: --ids_per_batch=4 × --images_per_id=2 over 3 replicas: "
                                         r"each replica would get 2\.66667 images, not whole identities of 2"):
        runner.plan("verify")
    assert runner.plan("classify")  # no P×K batches there
    assert Runner(cfg.replace(ids_per_batch=6), ThreeReplicas(), log=lambda _: None).plan("verify")


@pytest.mark.parametrize("task", ["align", "verify"])
def test_transfer_stages_take_lr_transfer_and_fall_back_to_lr_init(task):
    """--lr_transfer sets the rate of the align/verify teacher and of every student initialized from another
    stage; the from-scratch Pretrain student keeps --lr_scratch; 0 means --lr_init (the paper preset)."""
    from keras_kd.tasks import TASKS
    cfg = Config(students=(8,), lr_scratch=0.5, lr_init=0.2, lr_transfer=0.3)
    rates = {s.name: s.lr for s in TASKS[task].plan(cfg)}
    scratch = {n for n in rates if n.rsplit("_softmax", 1)[0].endswith("_pretrain")}
    assert scratch and rates == {n: 0.5 if n in scratch else 0.3 for n in rates}
    fallback = {s.name: s.lr for s in TASKS[task].plan(cfg.replace(lr_transfer=0.0))}
    assert fallback[next(n for n in fallback if n.startswith("teacher"))] == 0.2


@pytest.mark.parametrize("task", ["align", "verify"])
def test_transfer_stages_take_their_epochs_and_fall_back_to_transfer_epochs(task):
    """The Pretrain students already trained --pretrain_epochs on the task: --pretrain_transfer_epochs sets
    their transfer, --teacher_transfer_epochs the teacher's; 0 means --transfer_epochs for either."""
    from keras_kd.tasks import TASKS
    cfg = Config(students=(8,), transfer_epochs=7, pretrain_epochs=5, teacher_transfer_epochs=9,
                 pretrain_transfer_epochs=2)

    def epochs(c):
        return {s.name.replace("_softmax", ""): s.epochs for s in TASKS[task].plan(c) if s.task == task}

    assert epochs(cfg) == {"teacher": 9, "student_d8_pretrain": 5, **{f"student_d8_{init}_a{ab}": e for init, e in (
        ("pretrain", 2), ("distill", 7)) for ab in ("0b0", "0b1", "1b0")}}
    fallback = epochs(cfg.replace(teacher_transfer_epochs=0, pretrain_transfer_epochs=0))
    assert fallback["teacher"] == fallback["student_d8_pretrain_a0b1"] == fallback["student_d8_distill_a1b0"] == 7


def _tiny_distiller():
    """A 4-class softmax on 3 features, trained on its task loss alone: fit_stage without a ResNet."""
    from keras_kd.distill.distiller import Distiller
    inputs = keras.Input((3,))
    student = keras.Model(inputs, {"logits": keras.layers.Dense(4, name="fc")(inputs)})
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    return Distiller(student, task_loss=lambda y, s: ce(y["label"], s["logits"]))


def _data(x):
    y = np.arange(len(x), dtype="int32") % 4
    return tf.data.Dataset.from_tensor_slices((x, {"label": y})).batch(4).repeat()


CFG = Config(optimizer="adamw", lr_schedule="cosine", warmup_epochs=0, weight_decay=1e-3, verbose=0)


def test_fit_stage_trains_with_the_configured_optimizer_and_resumes_from_its_backup(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    batches = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: batches.append(b))
    d = _tiny_distiller()
    fitted = training.fit_stage(d, CFG, 0.1, _data(x), 2, 3, backup_dir=str(tmp_path), callbacks=[counter])
    assert isinstance(d.optimizer, keras.optimizers.AdamW) and d.optimizer.weight_decay == CFG.weight_decay
    assert int(d.optimizer.iterations) == 6 and batches == [0, 1, 2] * 2  # extra callbacks see every step
    assert len(fitted.history["loss"]) == 2 and all(np.isfinite(fitted.history["loss"]))
    assert fitted.resumed is None and fitted.nan is None and fitted.seconds > 0
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2

    told = []
    again = training.fit_stage(_tiny_distiller(), CFG, 0.1, _data(x), 3, 3, backup_dir=str(tmp_path),
                               on_resume=lambda epoch, step: told.append((epoch, step)))
    assert again.resumed == (2, 0) and told == [(2, 0)]  # the two backed-up epochs are not trained again
    assert again.history["loss"][:2] == fitted.history["loss"] and len(again.history["loss"]) == 3


def test_fit_stage_stops_at_the_first_nan_and_backs_nothing_up(tmp_path):
    x = np.full((12, 3), np.nan, "float32")
    fitted = training.fit_stage(_tiny_distiller(), CFG, 0.1, _data(x), 2, 3, backup_dir=str(tmp_path))
    assert fitted.nan is not None and fitted.nan[:2] == (0, 0) and not np.isfinite(fitted.nan[2])
    assert len(fitted.history["loss"]) == 1  # stopped in the first epoch
    assert not list(tmp_path.rglob("checkpoint"))
