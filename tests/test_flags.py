"""Flags: presets fill what the command line leaves unset; --flagfile works; bad values are refused."""
import pytest
from absl import flags

from flags.presets import PRESETS


def test_preset_fills_unset_flags(parse):
    cfg = parse("--preset=smoke")
    assert cfg.image_size == 32 and cfg.students == (8,) and cfg.teacher_epochs == 1
    assert cfg.ab_grid == ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0))
    assert cfg.verify_softmax == (False, True)


def test_config_defaults_are_the_default_run(parse):
    """`Config()` is what `python main.py` runs with no flags, which is the quick preset."""
    from keras_kd.config import Config
    assert parse() == Config() == parse("--preset=quick")


def test_method_hyperparameters_are_config_fields_and_flags(parse):
    """methods.py's fields define the flags; Config keeps a field of the same name and default for each."""
    from keras_kd.config import Config
    from keras_kd.distill import methods
    defaults = {name: default for name, default, _, _ in methods.hyperparameters()}
    assert "dkd_beta" in defaults and "rkd_angle_weight" in defaults
    prefixes = tuple(f"{c.prefix}_" for c in methods.REGISTRY.values() if c.prefix)
    assert {f for f in Config.__dataclass_fields__ if f.startswith(prefixes)} == set(defaults)
    assert {n: getattr(Config(), n) for n in defaults} == defaults == {n: getattr(parse(), n) for n in defaults}
    cfg = parse("--dkd_beta=2", "--at_p=1")
    assert methods.settings("dkd", cfg) == {"dkd_alpha": 1.0, "dkd_beta": 2.0, "dkd_temperature": 4.0}
    assert methods.create("at", cfg) == methods.AT(p=1.0, beta=1000.0)
    with pytest.raises(flags.Error):
        parse("--dist_tau=0")


def test_val_fraction_defaults_to_a_tenth_and_zero_turns_it_off(parse):
    assert parse().val_fraction == 0.1
    assert parse("--val_fraction=0").val_fraction == 0.0


def test_inits_are_comma_lists(parse):
    assert parse("--cls_inits=label,select").cls_inits == ("label", "select")
    assert parse("--cls_inits=select").cls_inits == ("select",)
    assert parse("--transfer_inits=distill,select").transfer_inits == ("distill", "select")


def test_explicit_flag_beats_preset(parse):
    cfg = parse("--preset=smoke", "--image_size=40", "--students=2,4", "--ab_grid=1:1")
    assert cfg.image_size == 40 and cfg.students == (2, 4) and cfg.ab_grid == ((1.0, 1.0),)


def test_flagfile(parse, tmp_path):
    f = tmp_path / "run.cfg"
    f.write_text("--preset=paper\n--students=8\n--temperature=4\n")
    cfg = parse(f"--flagfile={f}")
    assert cfg.preset == "paper" and cfg.students == (8,) and cfg.temperature == 4.0
    assert cfg.image_size == 224 and cfg.batch_size == 256 and cfg.lr_scratch == 0.1


def test_paper_preset_follows_the_paper():
    p = PRESETS["paper"]
    assert (p["image_size"], p["batch_size"], p["align_batch_size"]) == (224, 256, 64)
    assert p["ids_per_batch"] * p["images_per_id"] == 128
    assert (p["lr_scratch"], p["lr_init"], p["lr_decay_epochs"], p["temperature"], p["margin"]) == (
        0.1, 0.01, 30, 3.0, 0.4)


@pytest.mark.parametrize("argv", [["--students=0"], ["--students=a"], ["--ab_grid=0:x"], ["--preset=huge"],
                                  ["--verify_softmax=maybe"], ["--scratch_targets=dark"], ["--image_size=8"],
                                  ["--cache=ram"], ["--val_fraction=0.6"], ["--val_fraction=-0.1"],
                                  ["--cls_inits=label,teacher"], ["--cls_inits="]])
def test_bad_values_are_refused(parse, argv):
    with pytest.raises(flags.Error):
        parse(*argv)
