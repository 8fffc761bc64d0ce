"""ResNet-50/d: outputs, parameter and FLOP counts, weight transfer between tasks."""
import math

import numpy as np
import pytest

from keras_kd.keras import keras, tf
from keras_kd.models import network, resnet

SIZE = 32
CLASSES = 5


def _images(n=4, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32))


@pytest.mark.parametrize("heads,embedding_dim", [((), 0), (("landmarks", "embedding"), 0)])
def test_output_keys_and_shapes(heads, embedding_dim):
    m = resnet.build_model(8, SIZE, CLASSES, heads=heads, embedding_dim=embedding_dim)
    out = m(_images(), training=False)
    assert set(out) == {"logits", "hidden", "hint", *heads}
    # 32 → stem conv /2 → 16 → max-pool /2 → 8 → stage 2 /2 → 4; stage-2 width 128·4/8 = 64.
    assert out["hint"].shape == (4, 4, 4, 64)
    assert out["hidden"].shape == (4, 2048 // 8)
    assert out["logits"].shape == (4, CLASSES)
    if "landmarks" in heads:
        assert out["landmarks"].shape == (4, 5, 2)
        # Zero kernel + 0.5 bias: a fresh head predicts the crop centre.
        np.testing.assert_allclose(out["landmarks"].numpy(), 0.5, atol=1e-6)
        # The fc layer predicts in tenths of the crop around its centre: output = 0.5 + fc / 10,
        # reshaped as (x1, y1, ..., x5, y5).
        m.get_layer("landmarks_fc").bias.assign(np.arange(10, dtype=np.float32))
        got = m(_images(), training=False)["landmarks"].numpy()
        np.testing.assert_allclose(got[2], 0.5 + np.arange(10).reshape(5, 2) / 10, atol=1e-6)
    if "embedding" in heads:
        assert out["embedding"].shape == (4, embedding_dim or 2048 // 8)
        norms = np.linalg.norm(out["embedding"].numpy(), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    for v in out.values():
        assert np.isfinite(v.numpy()).all()


def test_projected_embedding_is_unit_norm_in_training_mode_too():
    m = resnet.build_model(8, SIZE, CLASSES, heads=("embedding",), embedding_dim=8)
    emb = m(_images(6, seed=1) * 3.0, training=True)["embedding"].numpy()
    assert emb.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_hint_and_hidden_widths_scale_with_divisor():
    for d in (1, 2, 4):
        out = resnet.build_model(d, SIZE, CLASSES).output
        assert out["hidden"].shape[-1] == 2048 // d
        assert out["hint"].shape[-1] == 512 // d


def _trunk_params(model) -> int:
    """Trainable parameters without the class head (whose size depends on the class count, not on d²)."""
    return sum(int(np.prod(w.shape)) for layer in model.layers if layer.name != "logits"
               for w in layer.trainable_weights)


def test_params_scale_as_one_over_d_squared():
    teacher = resnet.build_model(1, SIZE, 2)
    t = _trunk_params(teacher)
    # ResNet-50 without its 1000-way fc: 25.56M − 2.05M ≈ 23.5M.
    assert 23.3e6 < t < 23.7e6
    # count_params counts every trainable weight, the class head included (2049 · 2 here).
    assert network.count_params(teacher) == t + 2049 * 2
    for d in (2, 4, 8):
        s = _trunk_params(resnet.build_model(d, SIZE, 2))
        assert abs(s / (t / d**2) - 1) < 0.10, (d, s, t / d**2)


def _resnet50_macs(size: int, d: int, classes: int) -> int:
    """Multiply-adds of ResNet-50/d counted from the architecture, independently of the Keras model.

    Stride on the 3×3 conv of the first block of stages 2-4 (v1.5, torchvision's layout), 'same' padding.
    """
    ch = lambda c: max(1, c // d)  # noqa: E731
    h = math.ceil(size / 2)                        # stem 7×7/2
    macs = h * h * 7 * 7 * 3 * ch(64)
    h = math.ceil(h / 2)                           # max-pool 3×3/2
    c_in = ch(64)
    for s, (n, w) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        f = ch(w)
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            h_out = math.ceil(h / stride)
            macs += h * h * c_in * f                 # 1×1 reduce (stride 1)
            macs += h_out * h_out * 9 * f * f        # 3×3 (carries the stride)
            macs += h_out * h_out * f * 4 * f        # 1×1 expand
            if b == 0:
                macs += h_out * h_out * c_in * 4 * f  # projection shortcut
            c_in, h = 4 * f, h_out
    return macs + c_in * classes                   # the fc layer


def test_flops_of_the_teacher_at_224():
    m = resnet.build_model(1, 224, 1000)
    flops = network.count_flops(m)
    macs = _resnet50_macs(224, 1, 1000)
    # Derived above: 4,089,184,256 MACs, the familiar "ResNet-50 ≈ 4.1 GMACs" (torchvision: 4.09 G).
    # count_flops reports 2 × MACs = 8,178,368,512 ≈ 8.2 GFLOPs.
    assert macs == 4_089_184_256
    assert flops == 2 * macs
    assert abs(flops / 8.2e9 - 1) < 0.10


def test_flops_of_students_follow_the_same_count():
    for d in (2, 8):
        m = resnet.build_model(d, SIZE, CLASSES)
        assert network.count_flops(m) == 2 * _resnet50_macs(SIZE, d, CLASSES)


def test_transfer_weights_classify_to_align():
    keras.utils.set_random_seed(1)
    cls = resnet.build_model(8, SIZE, CLASSES, name="cls")
    keras.utils.set_random_seed(2)
    align = resnet.build_model(8, SIZE, CLASSES, heads=("landmarks",), name="align")
    # Perturb the classification model so that every copied weight (BN included) differs before transfer.
    for w in cls.weights:
        w.assign(w + tf.random.uniform(w.shape, 0.1, 0.2))
    head_before = [w.copy() for w in align.get_layer("landmarks_fc").get_weights()]
    assert not np.array_equal(cls.get_layer("stem_conv").get_weights()[0],
                              align.get_layer("stem_conv").get_weights()[0])

    copied = network.transfer_weights(cls, align)

    with_weights = [layer.name for layer in cls.layers if layer.weights]
    assert sorted(copied) == sorted(with_weights)
    assert "logits" in copied and "landmarks_fc" not in copied
    for name in with_weights:
        for a, b in zip(cls.get_layer(name).get_weights(), align.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(head_before, align.get_layer("landmarks_fc").get_weights()):
        np.testing.assert_array_equal(a, b)
    # Same trunk and class head → same logits and hidden features.
    x = _images()
    o1, o2 = cls(x, training=False), align(x, training=False)
    np.testing.assert_allclose(o1["logits"].numpy(), o2["logits"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o1["hidden"].numpy(), o2["hidden"].numpy(), rtol=1e-5, atol=1e-5)


def test_transfer_weights_width_mismatch_raises():
    with pytest.raises(ValueError, match="cannot transfer layer"):
        network.transfer_weights(resnet.build_model(8, SIZE, CLASSES), resnet.build_model(4, SIZE, CLASSES))
    with pytest.raises(ValueError, match="'logits'"):  # same trunk, different class count
        network.transfer_weights(resnet.build_model(8, SIZE, CLASSES), resnet.build_model(8, SIZE, CLASSES + 1))


def test_select_weights_takes_every_kth_element_and_copies_equal_shapes():
    teacher, student = resnet.build_model(2, SIZE, CLASSES), resnet.build_model(8, SIZE, CLASSES)
    selected = network.select_weights(teacher, student)
    assert sorted(selected) == sorted(layer.name for layer in student.layers if layer.weights)
    t, s = teacher.get_layer("s3b1_conv2").get_weights()[0], student.get_layer(
        "s3b1_conv2").get_weights()[0]
    np.testing.assert_array_equal(s, t[:, :, ::4, ::4])  # 3×3 kernel, 128 → 32 channels in and out (/2 → /8)
    t, s = teacher.get_layer("logits").get_weights(), student.get_layer("logits").get_weights()
    np.testing.assert_array_equal(s[0], t[0][::4])  # 1024 → 256 features, every class kept
    np.testing.assert_array_equal(s[1], t[1])
    np.testing.assert_array_equal(student.get_layer("stem_conv").get_weights()[0],
                                  teacher.get_layer("stem_conv").get_weights()[0][:, :, :, ::4])  # RGB kept


def test_selected_channels_are_the_same_in_every_layer():
    """With the teacher's weights from unselected channels zeroed, the selected student computes the teacher's
    logits exactly: each layer reads the channels the layer before kept, residual sums and BN included."""
    keras.utils.set_random_seed(3)
    teacher = resnet.build_model(2, SIZE, CLASSES, blocks=(1, 2, 1, 1))
    rng = np.random.default_rng(0)
    for layer in teacher.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # stats that differ per channel
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
                               for i, w in enumerate(layer.get_weights())])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, *rest = layer.get_weights()
            n_in = kernel.shape[-2]
            if n_in > 3:  # every input channel the /4 student does not keep (not every 2nd) reads nothing
                kept = np.zeros(n_in, bool)
                kept[::2] = True
                kernel[..., ~kept, :] = 0
            layer.set_weights([kernel] + rest)
    student = resnet.build_model(4, SIZE, CLASSES, blocks=(1, 2, 1, 1))
    network.select_weights(teacher, student)
    x = _images()
    np.testing.assert_allclose(student(x, training=False)["logits"].numpy(),
                               teacher(x, training=False)["logits"].numpy(), rtol=1e-4, atol=1e-4)


def test_select_weights_refuses_a_narrower_or_other_network():
    with pytest.raises(ValueError, match="cannot select the weights of layer 'stem_conv'.*at least as wide"):
        network.select_weights(resnet.build_model(8, SIZE, CLASSES), resnet.build_model(4, SIZE, CLASSES))
    with pytest.raises(ValueError, match="'logits'"):  # more classes than the source has
        network.select_weights(resnet.build_model(4, SIZE, CLASSES), resnet.build_model(8, SIZE, CLASSES + 1))


@pytest.mark.parametrize("d", [0, -2])
def test_non_positive_width_divisor_raises(d):
    with pytest.raises(ValueError, match="width_divisor"):
        resnet.build_model(d, SIZE, CLASSES)


@pytest.mark.parametrize("head", ["heatmap", "spatial", "pooled"])
def test_landmark_heads_and_their_k(head):
    """Every landmark head returns [N, 5, 2]; K ("hidden") is the layer feeding its last layer, with the
    same width at every divisor for the spatial and heat-map heads (no adapter between teacher and
    student), the pooled features for the paper's head."""
    size = 48
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype(np.float32))
    widths = {}
    for d in (1, 8):
        m = resnet.build_model(d, size, CLASSES, heads=("landmarks",), landmark_head=head)
        out = m(x, training=False)
        assert out["landmarks"].shape == (2, 5, 2) and np.isfinite(out["landmarks"].numpy()).all()
        widths[d] = out["hidden"].shape[-1]
    if head == "pooled":
        assert widths == {1: 2048, 8: 256}
    else:
        assert widths[1] == widths[8]
    with pytest.raises(ValueError, match="landmark_head"):
        resnet.build_model(8, size, CLASSES, heads=("landmarks",), landmark_head="dense")


def test_soft_argmax_finds_a_peak_and_its_centre_of_mass():
    from keras_kd.models.heads import SoftArgmax
    maps = np.full((1, 4, 6, 2), -30.0, np.float32)
    maps[0, 1, 4, 0] = 30.0                        # one peak: row 1, column 4
    maps[0, 2, 1, 1] = maps[0, 2, 2, 1] = 30.0     # two equal peaks: their midpoint
    got = SoftArgmax()(tf.constant(maps)).numpy()
    np.testing.assert_allclose(got[0, 0], [(4 + 0.5) / 6, (1 + 0.5) / 4], atol=1e-5)
    np.testing.assert_allclose(got[0, 1], [(1.5 + 0.5) / 6, (2 + 0.5) / 4], atol=1e-5)
