"""bench.teacher_precision runs its three cases and reports float32 against bfloat16 (on shallow networks)."""
from bench import teacher_precision


def test_three_cases_timed_and_the_outputs_compared(capsys):
    rows = teacher_precision.main(["--size=32", "--batch=4", "--repeats=1", "--blocks=1,1,1,1"])
    assert [r["case"] for r in rows] == ["teacher forward (inference)", "teacher train step",
                                         "/8 \"Ours\" step, teacher online"]
    for r in rows:
        assert r["float32_s"] > 0 and r["bfloat16_s"] > 0
        assert r["ratio"] == r["bfloat16_s"] / r["float32_s"]
    out = capsys.readouterr().out
    assert "RATIO teacher_precision: time with the teacher in bfloat16 ÷ in float32: teacher forward" in out
    diff = float(out.split("(logits differ by ")[1].split(" ")[0])
    assert 0 < diff < 0.05  # bfloat16 did compute, and close to float32
