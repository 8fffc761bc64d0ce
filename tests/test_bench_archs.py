"""bench.archs: the network list and the FLOP-proportional ratios and table, on made-up figures."""
import pytest

from bench import archs


def row(arch, divisor, size, flops, step_s, int8_s=None):
    net = next(n for n in archs.networks([2, 8]) if n["arch"] == arch and n["divisor"] == divisor)
    r = {**net, "size": size, "params": 1_000_000, "flops": flops, "step_s": step_s}
    if int8_s is not None:
        r.update(int8_kb=100.0, int8_s=int8_s, fp32_kb=400.0, fp32_s=2 * int8_s)
    return r


def test_networks_teacher_first_then_students():
    nets = archs.networks([2, 8])
    assert [n["tag"] for n in nets] == ["d1", "d2", "d8", "mbf", "mv3s", "mv3l"]
    assert nets[0]["name"] == "ResNet-50 (teacher)" and nets[2]["name"] == "ResNet-50/8"
    assert archs.networks([1, 4])[1]["tag"] == "d4"  # the teacher is not listed twice


def test_ratios_use_the_teacher_of_the_same_size():
    rows = archs.add_ratios([
        row("resnet50", 1, 48, 400e6, 0.4, 0.002), row("resnet50", 8, 48, 8e6, 0.04, 0.0001),
        row("resnet50", 1, 112, 2000e6, 2.0, 0.010), row("mobilenet_v3_small", 1, 112, 30e6, 0.09)])
    d8, mv3s = rows[1], rows[3]
    assert rows[0]["step_vs_prop"] == pytest.approx(1.0) and rows[0]["int8_vs_prop"] == pytest.approx(1.0)
    assert d8["flop_ratio"] == pytest.approx(0.02)
    assert d8["step_prop_s"] == pytest.approx(0.008) and d8["step_vs_prop"] == pytest.approx(5.0)
    assert d8["int8_vs_prop"] == pytest.approx(0.0001 / (0.002 * 0.02))
    assert mv3s["step_vs_prop"] == pytest.approx(0.09 / (2.0 * 0.015)) and "int8_vs_prop" not in mv3s

    text, line = archs.report(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and lines[0].startswith("| network | input |")
    assert "| ResNet-50/8 | 48 | 1.000 | 8.0 | 0.0200 | 40.0 | 5.00 | 100 | 0.10 | 2.50 | 0.20 |" in text
    assert lines[-1].endswith("| – | – | – | – |")  # no TFLite figures for that row
    assert line.startswith("RATIO archs: ") and "d1@" not in line
    assert "d8@48 5.00, mv3s@112 3.00;" in line and line.endswith("d8@48 2.50")
