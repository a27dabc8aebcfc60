"""Benchmark scoring and TSV reading on hand-made cases with known answers (no model)."""
import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from mindspeed_ms.inference.benchmarks import scoring
from mindspeed_ms.inference.benchmarks.datasets import (BenchmarkError, build_prompt, dump_images,
                                                        read_benchmark_tsv)

CHOICES = {"A": "stem", "B": "leaf", "C": "root", "D": "flower"}


@pytest.mark.parametrize("pred,letter", [
    ("B", "B"), ("B.", "B"), ("(C) root", "C"), ("The answer is D", "D"), ("Answer: [A]", "A"),
    ("leaf", "B"),                       # no letter: the one option text found in the answer
    ("a leaf or a root", "Z"),           # two option texts: nothing readable
    ("I'm sorry, but without the image provided I cannot say", "Z"),
    ("A or B", "Z"),                     # two letters
    ("", "Z"), ("Z", "Z"),
])
def test_option_letter(pred, letter):
    assert scoring.extract_option(pred, CHOICES)[0] == letter


def test_mcq_hit_and_log():
    row = dict(CHOICES, prediction="B", GT="B")
    assert scoring.mcq_hit(row) == {"hit": 1, "log": "Match Log: B. "}
    row = dict(CHOICES, prediction="no idea", GT="B")
    r = scoring.mcq_hit(row)
    assert r["hit"] == 0 and "Failed in Prefetch" in r["log"]
    # NaN options are not choices
    row = {"A": "x", "B": float("nan"), "prediction": "B", "GT": "B"}
    assert scoring.mcq_hit(row)["hit"] == 0


def test_quantifier_rule_depends_on_verbose(monkeypatch):
    pred = "A dog is in the picture"   # 'A' is a word here
    monkeypatch.delenv("VERBOSE", raising=False)
    assert scoring.extract_option(pred, {"A": "cat", "B": "bird"})[0] == "A"
    monkeypatch.setenv("VERBOSE", "0")   # any string turns the rule on (MindSpeed-MM's os.environ.get)
    assert scoring.extract_option(pred, {"A": "cat", "B": "bird"})[0] == "Z"


@pytest.mark.parametrize("gt,pred,dist", [
    ("hello", "hello", 0.0), ("Hello", " hello ", 0.0), ("Hello", "hello x", 2 / 7),
    ("kitten", "sitting", 3 / 7), ("", "", 0.0), ("abc", "", 1.0),
    ("a   b", "a bc", 1 / 5),      # distance of the normalised strings over the raw length (5, not 4)
])
def test_anls_distance(gt, pred, dist):
    assert math.isclose(scoring.anls_distance(gt, pred), dist, rel_tol=1e-12)


def test_docvqa_hit_threshold_and_best_answer():
    # best answer wins; below 0.5 similarity counts 0
    m = scoring.vqa_matches("['1985', '1985.']", "1985", "anls")
    assert m == [0.0, 0.2] and scoring.vqa_hit(m, "docvqa_val") == 1.0
    m = scoring.vqa_matches("['kitten']", "sitting", "anls")
    assert scoring.vqa_hit(m, "docvqa_val") == pytest.approx(4 / 7)
    m = scoring.vqa_matches("['abcdef']", "abxxxx", "anls")
    assert scoring.vqa_hit(m, "docvqa_val") == 0.0


@pytest.mark.parametrize("target,pred,ok", [
    ("12", "12", True), ("12", "12.5", True), ("12", "13", False), ("45%", "0.46", True),
    ("Yes", "yes", True), ("Yes", "no", False), ("0", "0", True), ("0", "0.0", False),   # target 0: string test
])
def test_relaxed_accuracy(target, pred, ok):
    # MindSpeed-MM calls relaxed_correctness(prediction, answer): the 5% is of the prediction
    assert scoring.relaxed_correctness(pred, target) is ok


def test_relaxed_accuracy_tolerance_is_relative_to_prediction():
    assert scoring.vqa_matches("100", "95.3", "relaxed_accuracy") == [True]     # |100-95.3|/95.3 = 4.9%
    assert scoring.vqa_matches("100", "95.2", "relaxed_accuracy") == [False]    # 5.04% of 95.2


def test_vqa_summary_by_category_and_split():
    rows = [{"answer": "12", "prediction": "12", "category": "human"},
            {"answer": "3", "prediction": "4", "category": "augmented"},
            {"answer": "Yes", "prediction": "yes", "category": "human"}]
    s, hits = scoring.vqa_summary(rows, "chartqa_test")
    assert hits == [1.0, 0.0, 1.0]
    assert s == {"Overall": pytest.approx(200 / 3), "augmented": 0.0, "human": 100.0}
    rows = [dict(r, split=sp) for r, sp in zip(rows, ["a", "b", "b"])]
    s, _ = scoring.vqa_summary(rows, "chartqa_test")
    assert s == {"a": 100.0, "b": 50.0, "Overall": pytest.approx(200 / 3)}


def test_vqa_score_normalization():
    assert scoring.vqa_normalize("The Two dogs!") == "2 dogs"
    assert scoring.vqa_normalize("dont") == "don't"
    # VQA score: matches among the *other* answers, / 3
    assert scoring.vqa_matches("['red', 'red', 'red', 'blue']", "Red", "vqa_score") == [2 / 3, 2 / 3, 2 / 3, 1.0]


def test_mcq_report():
    rows = [{"hit": 1, "split": "dev", "category": "Art"}, {"hit": 0, "split": "dev", "category": "Math"},
            {"hit": 1, "split": "val", "category": "Art"}]
    r = scoring.mcq_report(rows)
    assert r["split"] == ["dev", "val"] and r["Overall"] == [0.5, 1.0]
    assert r["Art"] == [1.0, 1.0] and r["Math"][0] == 0.0 and math.isnan(r["Math"][1])
    r = scoring.mcq_report([{"hit": 1}, {"hit": 0}])
    assert r == {"split": ["none"], "Overall": [0.5]}


def test_mmmu_open_question_becomes_choice():
    out = scoring.mmmu_open_to_choice([{"A": float("nan"), "answer": "42"}, {"A": "x", "answer": "A"}])
    assert out[0]["A"] == "42" and out[0]["B"] == "Other Answers" and out[1] == {"A": "x", "answer": "A"}


def _b64(color):
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_tsv_reading_image_refs_and_prompts(tmp_path):
    tsv = tmp_path / "AI2D_TEST.tsv"
    tsv.write_text("index\timage\tquestion\thint\tA\tB\tC\tD\tanswer\n"
                   f"3\t{_b64('red')}\tWhat is it?\t\tcat\tdog\t\t\tA\n"
                   f"5\t3\tAnd this?\tLook left.\tcat\tdog\tcow\t\tB\n"
                   f"9\t\tno image row\t\tx\ty\t\t\tA\n")
    data = read_benchmark_tsv(str(tsv), "ai2d_test")
    assert list(data["index"]) == [3, 5]                          # the row without an image is dropped
    assert data["image"][1] == data["image"][0]                   # '3' refers to row 3's image
    paths = dump_images(data.iloc[1], str(tmp_path / "ai2d_test" / "images"), "x")
    assert paths[0].endswith("ai2d_test/images/5.jpg")
    assert np.asarray(Image.open(paths[0]))[5, 5, 0] > 200      # the red image, re-encoded as JPEG
    msg = build_prompt(data.iloc[1], paths, "ai2d_test", "qwen2_vl_7b")
    assert msg[0] == {"type": "image", "value": paths[0]}
    assert msg[1]["value"] == ("Hint: Look left.\nQuestion: And this?\nOptions:\nA. cat\nB. dog\nC. cow\n"
                               "Please select the correct answer from the options above.")
    own = build_prompt(data.iloc[0], paths, "ai2d_test", "other_model")
    assert own[1]["value"].endswith("B. dog\nPlease select the correct answer from the options above. \n")
    vqa = build_prompt(data.iloc[0], paths, "chartqa_test", "qwen2_vl_7b")
    assert vqa[1]["value"] == "What is it?\nPlease try to answer the question with short words or phrases if possible."


def test_tsv_errors(tmp_path):
    bad = tmp_path / "x.tsv"
    bad.write_text("index\tquestion\nA\tq\n")
    with pytest.raises(BenchmarkError, match="column\\(s\\) image, answer missing"):
        read_benchmark_tsv(str(bad), "docvqa_val")
    bad.write_text("index\timage\tquestion\tanswer\n1\t77\tq\ta\n")
    with pytest.raises(BenchmarkError, match="row index 1: image '77'"):
        read_benchmark_tsv(str(bad), "docvqa_val")
    with pytest.raises(BenchmarkError, match="not one of"):
        read_benchmark_tsv(str(bad), "mmbench")


def test_mmmu_own_prompt_places_images_at_their_tags():
    row = {"index": 1, "question": "Compare <image 2> with <image 1>.", "A": "same", "B": "different",
           "answer": "B"}
    msg = build_prompt(row, ["p1.jpg", "p2.jpg"], "mmmu_dev_val", "other_model", use_custom_prompt=False)
    assert [m["type"] for m in msg] == ["text", "image", "text", "image", "text"]
    assert msg[0]["value"] == "Question: Compare " and msg[1]["value"] == "p2.jpg" and msg[3]["value"] == "p1.jpg"
    assert msg[4]["value"].startswith(".\nOptions:\nA. same\nB. different\n")
    # the Qwen2-VL prompt keeps the images first and the tags as text
    msg = build_prompt(row, ["p1.jpg", "p2.jpg"], "mmmu_dev_val", "qwen2_vl_7b")
    assert [m["type"] for m in msg] == ["image", "image", "text"]
    assert msg[2]["value"].endswith("B. different\nPlease select the correct answer from the options above.")
    # a Chinese multiple-choice question gets the Chinese instruction
    cn = build_prompt({"question": "这是什么?", "A": "猫", "B": "狗"}, [], "ai2d_test", "qwen2_vl_7b")
    assert cn[-1]["value"].endswith("B. 狗\n请直接回答选项字母。")
