"""bench.teacher_precision: its three cases and the outputs' difference (on shallow networks), and the table
and RATIO line on made-up figures."""
import pytest

from bench import teacher_precision


def test_three_cases_run_and_the_outputs_compared():
    rows, diff = teacher_precision.main(["--size=32", "--batch=4", "--repeats=1", "--blocks=1,1,1,1"])
    assert [r["case"] for r in rows] == ["teacher forward (inference)", "teacher train step",
                                         "/8 \"Ours\" step, teacher online"]
    assert 0 < diff["logits"] < 0.05 and 0 < diff["hidden"] < 0.05  # bfloat16 did compute, close to float32


def test_report_divides_bfloat16_by_float32():
    rows = [teacher_precision.row("teacher forward (inference)", 48, 32, {"float32": 0.1, "bfloat16": 0.07}),
            teacher_precision.row("teacher train step", 48, 32, {"float32": 0.4, "bfloat16": 0.34})]
    assert rows[0]["ratio"] == pytest.approx(0.7) and rows[1]["ratio"] == pytest.approx(0.85)
    text, line = teacher_precision.report(rows, {"logits": 0.0072, "hidden": 0.0054})
    assert "| teacher forward (inference) | 48 | 32 | 0.1 | 0.07 | 0.70 |" in text
    assert text.endswith("logits 7.2e-03, K 5.4e-03")
    assert line == ("RATIO teacher_precision: time with the teacher in bfloat16 ÷ in float32: teacher forward "
                    "(inference) 0.70, teacher train step 0.85 (logits differ by 7e-03 of their largest)")
