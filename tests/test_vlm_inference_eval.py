"""inference_vlm.py and evaluate_vlm.py end to end on a tiny MindSpeed-MM checkpoint, with
MindSpeed-MM's shipped JSON files (the tiny model's sizes laid over the model sections, local
paths; the fast tests also shorten generation_config.max_new_tokens, the slow ones do not).

- the prompt (ids, pixel values, grid) equals transformers' Qwen2VLProcessor on the same messages,
  and the printed answer equals transformers' generate on the converted HF checkpoint;
- evaluate writes MindSpeed-MM's result files for the four benchmarks, and the scores in them
  equal a recomputation from the written predictions by the small scorers below;
- an interrupted evaluation resumes: predictions already written are not recomputed.
"""
import ast
import json
import os
import string

import numpy as np
import pytest

from mindspeed_ms.inference import vlm_cli
from mindspeed_ms.inference.benchmarks import run as eval_run
from mindspeed_ms.inference.mm_pipeline import Qwen2VlPipeline, fetch_image

from helpers.mm_eval import make_mm_checkpoint, make_tsv, tiny_variant

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "examples", "mindspore", "qwen2vl", "demo.jpeg")
BENCHMARKS = ("ai2d_test", "mmmu_dev_val", "chartqa_test", "docvqa_val")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    hf, mm = make_mm_checkpoint(str(root))
    return {"root": root, "hf": hf, "mm": mm}


def _flags(mm_model, load, mbs=1):
    # the flags of MindSpeed-MM's evaluate_qwen2vl_7b.sh / inference_qwen2vl_7b.sh (TP=PP=1)
    return ["--use-mcore-models", "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
            "--micro-batch-size", str(mbs), "--global-batch-size", str(mbs), "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "152064", "--seq-length", "1024", "--make-vocab-size-divisible-by", "1",
            "--normalization", "RMSNorm", "--use-fused-rmsnorm", "--swiglu", "--use-fused-swiglu", "--seed", "42",
            "--bf16", "--load", load, "--vocab-size", "1", "--distributed-timeout-minutes", "1000",
            "--use-flash-attn", "--no-load-optim", "--no-load-rng", "--mm-model", mm_model, "--log-interval", "1",
            "--save-interval", "10000", "--eval-interval", "10000", "--eval-iters", "5000",
            "--distributed-backend", "nccl"]


def _short(path, max_new_tokens, pixels=None):
    """Fewer new tokens (and smaller images) for the fast tests."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    d["generation_config"]["max_new_tokens"] = max_new_tokens
    if pixels:
        d["min_pixels"], d["max_pixels"] = pixels
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f)
    return path


def _hf_reference(hf_dir, image, text, max_new_tokens, min_pixels=None, max_pixels=None, repetition_penalty=1.0):
    """transformers' pieces the way MindSpeed-MM's Qwen2VlPipeline uses them (its AutoProcessor is
    the Qwen2-VL image processor + tokenizer + chat template; built here from those parts because
    AutoProcessor also wants torchvision for videos), then transformers' generate."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = AutoTokenizer.from_pretrained(hf_dir)
    ip = Qwen2VLImageProcessor.from_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "chat_template.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = tok.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True)
    px = ip(images=[fetch_image(image, min_pixels, max_pixels)], return_tensors="pt")
    n = int(px["image_grid_thw"][0].prod()) // ip.merge_size ** 2       # Qwen2VLProcessor's expansion
    prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
    inputs = dict(tok([prompt], return_tensors="pt"), **px)
    model = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=[151645, 151643], pad_token_id=151643,
                             repetition_penalty=repetition_penalty)
    new = out[0, inputs["input_ids"].shape[1]:]
    return inputs, tok.batch_decode([new], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


def _last_line(capsys):
    cap = capsys.readouterr()
    return cap.out.rstrip("\n").split("\n")[-1], cap


def test_inference_prompt_and_answer_equal_transformers(ck, capsys):
    js = _short(tiny_variant("inference_qwen2vl_7b.json", str(ck["root"] / "inf7b.json"), ck["hf"],
                             image_path=DEMO), 8)
    rc = vlm_cli.main_inference(_flags(js, ck["mm"]))
    answer, cap = _last_line(capsys)
    assert rc == 0, cap.err
    assert "notice: min_pixels/max_pixels: used by evaluation only" in cap.out
    ref_inputs, ref_text = _hf_reference(ck["hf"], DEMO, "Describe this image and keep it within 100 words.", 8)
    assert answer == ref_text
    # the prompt itself, token for token and pixel for pixel
    args, cfg, backend, _ = vlm_cli.startup(_flags(js, ck["mm"]), "inference_vlm.py", "inference")
    pipe = Qwen2VlPipeline(cfg, model=None)
    ours = pipe.encode([{"type": "image", "value": DEMO}, {"type": "text", "value": cfg.prompts}])
    np.testing.assert_array_equal(ours["input_ids"], ref_inputs["input_ids"][0].numpy())
    np.testing.assert_array_equal(ours["image_grid_thw"], ref_inputs["image_grid_thw"].numpy())
    ref_px = ref_inputs["pixel_values"].numpy()
    np.testing.assert_allclose(ours["pixel_values"], ref_px, rtol=0, atol=2e-6 * np.abs(ref_px).max())


def test_evaluate_prompt_at_shipped_pixel_limits_equals_transformers(ck, tmp_path):
    """evaluate_qwen2vl_7b.json's min_pixels 1003520 (an upscale for most images) and an RGBA image."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor
    from PIL import Image

    js = tiny_variant("evaluate_qwen2vl_7b.json", str(tmp_path / "e.json"), ck["hf"], dataset_path=DEMO,
                      evaluation_dataset="ai2d_test", result_output_path=str(tmp_path / "o"))
    args, cfg, _, _ = vlm_cli.startup(_flags(js, ck["mm"]), "evaluate_vlm.py", "evaluation")
    rgba = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 4), dtype=np.uint8)).save(rgba)
    pipe = Qwen2VlPipeline(cfg, model=None)
    msg = [{"type": "image", "value": DEMO}, {"type": "image", "value": str(rgba)}, {"type": "text", "value": "Q?"}]
    ours = pipe.encode(msg, cfg.min_pixels, cfg.max_pixels)
    ip = Qwen2VLImageProcessor.from_pretrained(ck["hf"])
    imgs = [fetch_image(p, 1003520, 12845056) for p in (DEMO, str(rgba))]
    assert all(im.width * im.height >= 1003520 for im in imgs)
    ref = ip(images=imgs, return_tensors="np")
    np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], rtol=0,
                               atol=2e-6 * np.abs(ref["pixel_values"]).max())
    tok = AutoTokenizer.from_pretrained(ck["hf"])
    n = (ref["image_grid_thw"].prod(axis=1) // 4).tolist()
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            + "".join("<|vision_start|>" + "<|image_pad|>" * k + "<|vision_end|>" for k in n)
            + "Q?<|im_end|>\n<|im_start|>assistant\n")
    np.testing.assert_array_equal(ours["input_ids"], tok(text)["input_ids"])


# ---- small independent scorers for the recomputation -------------------------------------------

def _letter(pred, options):
    """Option letter: a lone letter token, else the one option whose text is in the answer, else Z."""
    spaced = pred
    for c in ".()[],:;!*#{}":
        spaced = spaced.replace(c, " ")
    found = [k for k in options if k in spaced.split()]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in spaced.split():
        return "Z"
    texts = [k for k, v in options.items() if str(v).lower() in pred.lower()]
    return texts[0] if len(texts) == 1 else "Z"


def _edit(a, b):
    d = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    d[:, 0], d[0, :] = range(len(a) + 1), range(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    return int(d[-1, -1])


def _anls(answers, pred):
    best = 0.0
    for gt in answers:
        g, p = " ".join(gt.strip().lower().split()), " ".join(pred.strip().lower().split())
        n = max(len(gt), len(pred))
        sim = 1 - (_edit(g, p) / n if n else 0.0)
        best = max(best, sim)
    return best if best >= 0.5 else 0.0


def _relaxed(answer, pred):
    def num(s):
        try:
            return float(s[:-1]) / 100 if s.endswith("%") else float(s)
        except ValueError:
            return None
    p, t = num(pred.strip()), num(answer)
    if p is not None and t:
        return float(abs(p - t) / abs(t) <= 0.05)
    return float(pred.strip().lower() == answer.lower())


def _read_table(path):
    import pandas as pd

    df = pd.read_csv(path, sep="\t", keep_default_na=False) if path.endswith(".tsv") else pd.read_excel(path)
    unq = lambda s: s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"' else s  # noqa: E731
    df.columns = [unq(c) for c in df.columns]
    return df.map(unq).to_dict("records")


# hand-written predictions for some rows (the rest are the model's): letters, option text, numbers
PREFILLED = {
    "ai2d_test": {"0": "A", "1": "The answer is (C) root.", "2": "root"},
    "mmmu_dev_val": {"validation_Art_0": "A", "validation_Art_1": "B. a tower"},
    "chartqa_test": {"100": "12.4", "101": "3.7", "102": "yes"},
    "docvqa_val": {"7": "Brown and Co.", "8": "1985", "9": "total amounts"},
}


SMALL = (28 * 28 * 4, 28 * 28 * 16)


def _evaluate(ck, capsys, name, n=4, mbs=2, max_new_tokens=3, prefill=True):
    root = ck["root"] / name
    root.mkdir(exist_ok=True)
    tsv = make_tsv(name, str(root / f"{name}.tsv"), n=n)
    out = root / "evaluation_outputs"
    js = tiny_variant("evaluate_qwen2vl_7b.json", str(root / "evaluate.json"), ck["hf"], dataset_path=tsv,
                      evaluation_dataset=name, result_output_path=str(out) + "/")
    if max_new_tokens:
        _short(js, max_new_tokens, SMALL)
    if prefill:
        out.mkdir(exist_ok=True)
        (out / f"0_1_{name}.json").write_text(json.dumps(PREFILLED[name]))
    rc = vlm_cli.main_evaluate(_flags(js, ck["mm"], mbs))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return out, tsv, cap


@pytest.mark.parametrize("name", BENCHMARKS)
def test_evaluate_writes_mindspeed_mm_files_and_scores(ck, capsys, name):
    out, tsv, cap = _evaluate(ck, capsys, name)
    ext = ".xlsx" if eval_run.xlsx_available() else ".tsv"
    base = out / f"qwen2_vl_7b_{name}"
    mcq = name in ("ai2d_test", "mmmu_dev_val")
    expected = {f"qwen2_vl_7b_{name}{ext}", f"qwen2_vl_7b_{name}_acc{ext}"} | \
        ({f"qwen2_vl_7b_{name}_PREV.json"} if mcq else set())
    assert set(os.listdir(out)) == expected            # the partial predictions file is gone
    rows = _read_table(str(base) + ext)
    acc = _read_table(f"{base}_acc{ext}")
    assert len(rows) == 4 and all("image" not in r for r in rows)
    preds = {str(r["index"]): str(r["prediction"]) for r in rows}
    for k, v in PREFILLED[name].items():               # resumed rows were not recomputed
        assert preds[k] == v
    if mcq:
        hits = []
        for r in rows:
            opts = {c: r[c] for c in string.ascii_uppercase if c in r and r[c] not in ("", "nan")}
            hits.append(int(_letter(str(r["prediction"]), opts) == str(r["answer"])))
            assert int(r["hit"]) == hits[-1], r
        by_split = {}
        for r, h in zip(rows, hits):
            by_split.setdefault(r["split"], []).append(h)
        assert [a["split"] for a in acc] == list(by_split)
        for a in acc:
            assert float(a["Overall"]) == pytest.approx(np.mean(by_split[a["split"]]))
        prev = json.loads((out / f"qwen2_vl_7b_{name}_PREV.json").read_text())
        assert {k: v["hit"] for k, v in prev.items()} == {str(r["index"]): h for r, h in zip(rows, hits)}
        assert sum(hits) >= 2                          # the hand-written rows score
    else:
        if name == "docvqa_val":
            hits = [_anls(ast.literal_eval(str(r["answer"])), str(r["prediction"])) for r in rows]
        else:
            hits = [_relaxed(str(r["answer"]), str(r["prediction"])) for r in rows]
        assert float(acc[0]["Overall"]) == pytest.approx(100 * np.mean(hits), rel=1e-9)
        assert sum(hits) > 1
        if name == "chartqa_test":
            for cat in ("human", "augmented"):
                want = np.mean([h for r, h in zip(rows, hits) if r["category"] == cat])
                assert float(acc[0][cat]) == pytest.approx(100 * want)
    assert "resuming:" in cap.out and "wrote" in cap.out
    # images went where MindSpeed-MM puts them
    assert os.path.isdir(os.path.join(os.path.dirname(tsv), name, "images"))


def test_interrupted_evaluation_resumes(ck, capsys, monkeypatch):
    name = "chartqa_test"
    full_out, _, _ = _evaluate(ck, capsys, name, n=5, mbs=5, prefill=False)
    full = {str(r["index"]): r["prediction"] for r in _read_table(str(full_out / f"qwen2_vl_7b_{name}.tsv"))} \
        if not eval_run.xlsx_available() else None
    # a second directory: the run stops after its first batch of 2
    root = ck["root"] / "resume"
    root.mkdir()
    tsv = make_tsv(name, str(root / f"{name}.tsv"), n=5)
    out = root / "out"
    js = _short(tiny_variant("evaluate_qwen2vl_7b.json", str(root / "e.json"), ck["hf"], dataset_path=tsv,
                             evaluation_dataset=name, result_output_path=str(out)), 3, SMALL)
    real = Qwen2VlPipeline.answer
    calls = []

    def failing(self, prompts):
        if calls:
            raise RuntimeError("power cut")
        calls.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(Qwen2VlPipeline, "answer", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        vlm_cli.main_evaluate(_flags(js, ck["mm"], 2))
    partial = json.loads((out / f"0_1_{name}.json").read_text())
    assert len(partial) == 2 and not (out / f"qwen2_vl_7b_{name}_acc.tsv").exists()

    answered = []

    def counting(self, prompts):
        answered.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(Qwen2VlPipeline, "answer", counting)
    assert vlm_cli.main_evaluate(_flags(js, ck["mm"], 2)) == 0
    assert "resuming: 2 of 5 predictions" in capsys.readouterr().out
    assert sum(answered) == 3                          # only the rows not yet written
    if full is not None:
        got = {str(r["index"]): r["prediction"] for r in _read_table(str(out / f"qwen2_vl_7b_{name}.tsv"))}
        assert got == full                             # same answers as the uninterrupted run (batch 5)
        for k, v in partial.items():
            assert got[k] == v


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inference_qwen2vl_2b.json", "inference_qwen2vl_72b.json"])
def test_inference_json_as_shipped_generation(ck, capsys, name):
    """generation_config exactly as shipped (256 new tokens; the 72B file's repetition penalty 1.05)."""
    js = tiny_variant(name, str(ck["root"] / f"full_{name}"), ck["hf"], image_path=DEMO)
    rc = vlm_cli.main_inference(_flags(js, ck["mm"]))
    answer, cap = _last_line(capsys)
    assert rc == 0, cap.err
    penalty = 1.05 if "72b" in name else 1.0
    _, ref = _hf_reference(ck["hf"], DEMO, "Describe this image and keep it within 100 words.", 256,
                           repetition_penalty=penalty)
    assert answer == ref


@pytest.mark.slow
def test_evaluate_as_shipped(ck, capsys):
    """generation_config and pixel limits exactly as shipped (each image upscaled to >= 1003520
    pixels, 5120 patches: the patch budget answers the batch of 2 one row per forward)."""
    name = "docvqa_val"
    out, _, cap = _evaluate(ck, capsys, name, n=2, mbs=2, max_new_tokens=None, prefill=False)
    assert f"{name} Overall" in cap.out
    ext = ".xlsx" if eval_run.xlsx_available() else ".tsv"
    rows = _read_table(str(out / f"qwen2_vl_7b_{name}{ext}"))
    acc = _read_table(str(out / f"qwen2_vl_7b_{name}_acc{ext}"))
    hits = [_anls(ast.literal_eval(str(r["answer"])), str(r["prediction"])) for r in rows]
    assert float(acc[0]["Overall"]) == pytest.approx(100 * np.mean(hits), rel=1e-9)
