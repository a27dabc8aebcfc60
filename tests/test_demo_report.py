"""The demo report reads the trainer's own log lines and the evaluator's JSON (no hand-written
log format: the lines come from mindspeed_ms.training.train_log)."""
import json

import pytest

from mindspeed_ms.inference import demo_report
from mindspeed_ms.training.train_log import format_iteration_line, format_validation_lines


def _log(tmp_path):
    lines = ["notice: running on CPU"]
    rows = [(1, 1200.0, 11.9, 40.0), (2, 1000.0, 8.5, 50.0), (3, 800.0, 4.25, 60.0)]
    for it, ms_, loss, tps in rows:
        lines.append(format_iteration_line(it, 3, it * 8, ms_, 1e-3, 8, loss, 1.0, tps))
    lines.append(format_validation_lines(3, 4.0))
    lines += [" > trained 3 iterations in 3.5s", " > loss curve: runs/x/save/loss_curve.png"]
    p = tmp_path / "train.log"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_parse_train_log(tmp_path):
    t = demo_report.parse_train_log(_log(tmp_path))
    assert t["steps"] == 3 and t["seconds"] == 3.5
    assert t["loss_first"] == pytest.approx(11.9) and t["loss_last"] == pytest.approx(4.25)
    # tokens/s = sum(gbs * tokens per sample) / sum(step time)
    assert t["tokens_per_s"] == pytest.approx(8 * (40 + 50 + 60) / 3.0, abs=0.1)
    assert t["loss_curve_png"] == "runs/x/save/loss_curve.png"


def test_report_json_keys(tmp_path):
    for name, acc in (("b.json", {"colour": 0.0, "overall": 0.0}), ("a.json", {"colour": 0.95, "overall": 0.5})):
        (tmp_path / name).write_text(json.dumps({"accuracy": acc}))
    rc = demo_report.main(["--run-dir", str(tmp_path), "--train-log", str(_log(tmp_path)), "--before",
                           str(tmp_path / "b.json"), "--after", str(tmp_path / "a.json"), "--chat-mm", "red",
                           "--chat-hf", "red", "--total-seconds", "42"])
    assert rc == 0
    r = json.loads((tmp_path / "report.json").read_text())
    for k in ("steps", "seconds", "tokens_per_s", "loss_first", "loss_last", "accuracy_before", "accuracy_after"):
        assert k in r
    assert r["accuracy_after"]["colour"] == 0.95 and r["chance"]["colour"] == pytest.approx(1 / 6, abs=1e-3)
    assert r["chat"]["same"] is True


def test_log_without_iterations_is_an_error(tmp_path):
    p = tmp_path / "empty.log"
    p.write_text("training failed\n")
    with pytest.raises(ValueError, match="no training iteration lines"):
        demo_report.parse_train_log(p)
