"""Learning happened: trained networks beat chance and the mean shape (in-process Runner, no subprocess).

Apart from test_main.py, whose tests share one model directory in order, so that pytest-xdist can run these
two beside it.
"""
import pytest

pytestmark = pytest.mark.slow


def test_teacher_learns_identities(tmp_path):
    """Learning happened: the ResNet-50 teacher's top-1 is well above chance (1/8) on synthetic faces.

    At 32 px with 100 faces in batches of 16 (smoke) the teacher's training is too noisy to show it; 48 px,
    batch 32 and 256 training faces do, in 8 short epochs.
    """
    from keras_kd.config import Config
    from keras_kd.stages import Runner

    cfg = Config(model_dir=str(tmp_path), image_size=48, students=(8,), batch_size=32, synthetic_identities=8,
                 synthetic_images=40, synthetic_size=56, teacher_epochs=8, lr_scratch=0.05, verbose=0)
    record = Runner(cfg, log=lambda *_: None).ensure("classify", "teacher")
    assert record["metrics"]["top1"] > 2 * (1 / 8), record["metrics"]


def test_alignment_learns_beyond_the_mean_shape(tmp_path):
    """Learning happened: a trained network places landmarks better than the mean training shape does.

    At 32 px (smoke) the last ResNet stage is 1×1 and 100 faces do not generalize, so this uses 48 px and
    ~500 training faces, with the /8 student trained on alignment from scratch (a ResNet-50 teacher needs
    more steps than a test can afford; the quick preset's tables in the README show the teacher learning).
    """
    from keras_kd.config import Config
    from keras_kd.stages import Runner
    from keras_kd.tasks.align import mean_shape_nrmse

    cfg = Config(model_dir=str(tmp_path), image_size=48, students=(8,), align_batch_size=16,
                 synthetic_identities=8, synthetic_images=80, synthetic_size=56, pretrain_epochs=10,
                 lr_scratch=0.05, verbose=0)
    runner = Runner(cfg, log=lambda *_: None)
    record = runner.ensure("align", "student_d8_pretrain")
    baseline = mean_shape_nrmse(runner.data_dir("align"), cfg)
    assert record["metrics"]["nrmse"] < 0.9 * baseline, (record["metrics"]["nrmse"], baseline)
