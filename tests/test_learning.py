"""Learning happened: trained networks beat chance and the mean shape (in-process Runner, no subprocess).

Apart from test_main.py, whose tests share one model directory in order, so that pytest-xdist can run these
two beside it.
"""
import pytest

pytestmark = pytest.mark.slow


def _quick_shaped(**kw):
    """A Config of the quick preset's shape and recipe (48 px, AdamW + warm-up + cosine, spatial head): its
    defaults."""
    from keras_kd.config import Config
    return Config(**{"image_size": 48, "students": (8,), "verbose": 0, **kw})


def _loss_fell(record, factor):
    loss = record["history"]["loss"]
    assert loss[-1] < factor * loss[0], loss


def test_teacher_learns_identities(tmp_path):
    """Learning happened: the ResNet-50 teacher's loss falls and its top-1 is well above chance (1/8).

    At 32 px with 100 faces in batches of 16 (smoke) the teacher's training is too noisy to show it; 48 px,
    batch 32 and 256 training faces do, in 8 short epochs.
    """
    from keras_kd.stages import Runner

    cfg = _quick_shaped(model_dir=str(tmp_path), batch_size=32, synthetic_identities=8, synthetic_images=40,
                        synthetic_size=56, teacher_epochs=8)
    record = Runner(cfg, log=lambda *_: None).ensure("classify", "teacher")
    _loss_fell(record, 0.6)
    assert record["metrics"]["top1"] > 3 * (1 / 8), record["metrics"]


def test_alignment_learns_beyond_the_mean_shape(tmp_path):
    """Learning happened: a trained network places landmarks better than the mean training shape does.

    At 32 px (smoke) the last ResNet stage is 1×1 and 100 faces do not generalize, so this uses 48 px and
    ~500 training faces, with the /8 student trained on alignment from scratch (a ResNet-50 teacher needs
    more steps than a test can afford; docs/recipe.md shows the quick preset's teacher learning).
    """
    from keras_kd.stages import Runner
    from keras_kd.tasks.align import mean_shape_nrmse

    cfg = _quick_shaped(model_dir=str(tmp_path), align_batch_size=16, synthetic_identities=8,
                        synthetic_images=80, synthetic_size=56, pretrain_epochs=10)
    runner = Runner(cfg, log=lambda *_: None)
    record = runner.ensure("align", "student_d8_pretrain")
    _loss_fell(record, 0.5)
    baseline = mean_shape_nrmse(runner.data_dir("align"), cfg)
    assert record["metrics"]["nrmse"] < 0.8 * baseline, (record["metrics"]["nrmse"], baseline)
