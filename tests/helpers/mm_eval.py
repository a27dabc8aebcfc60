"""Fixtures for inference_vlm.py / evaluate_vlm.py tests: MindSpeed-MM's shipped JSON files with
the tiny model's sizes and local paths, a tiny MindSpeed-MM checkpoint, and small TSV files in
each benchmark's VLMEvalKit format (base64 images)."""
import base64
import io
import json
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(os.path.dirname(HERE), "fixtures", "mindspeed_mm_infer")
TINY_MODEL_JSON = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "mindspore", "qwen2vl",
                               "model_tiny.json")


def tiny_variant(shipped_name, out_path, tokenizer_dir, **paths):
    """The shipped JSON with the tiny model's sizes laid over its model sections (every other key,
    generation_config included, as shipped) and the given path keys replaced."""
    with open(os.path.join(SHIPPED, shipped_name), encoding="utf-8") as f:
        data = json.load(f)
    with open(TINY_MODEL_JSON, encoding="utf-8") as f:
        tiny = json.load(f)
    data["image_encoder"]["vision_encoder"].update(tiny["image_encoder"]["vision_encoder"])
    data["image_encoder"]["vision_projector"].update(tiny["image_encoder"]["vision_projector"])
    data["text_decoder"].update(tiny["text_decoder"])
    data["tokenizer"]["from_pretrained"] = tokenizer_dir
    for k, v in paths.items():
        data[k] = v
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return out_path


def make_mm_checkpoint(root, seed=5):
    """(hf_dir, mm_dir): a tiny HF checkpoint and its MindSpeed-MM layout at iteration 4."""
    from mindspeed_ms.checkpoint.hf_io import load_hf_config, load_hf_state_dict
    from mindspeed_ms.checkpoint.names import hf_to_mm_state_dict
    from mindspeed_ms.tools.make_tiny_checkpoint import make_tiny_checkpoint
    from mindspeed_ms.training.checkpointing import save_checkpoint

    hf = make_tiny_checkpoint(os.path.join(root, "hf"), TINY_MODEL_JSON, seed=seed)
    sd = hf_to_mm_state_dict(load_hf_state_dict(hf), load_hf_config(hf))
    mm = os.path.join(root, "mm")
    save_checkpoint(mm, 4, sd)
    return hf, mm


def b64_image(rng, size=(56, 42)):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(h, "")) for h in header) + "\n")
    return path


def make_tsv(kind, path, n=4, seed=0):
    """A small TSV in the benchmark's format: ai2d_test, mmmu_dev_val, chartqa_test, docvqa_val."""
    rng = np.random.default_rng(seed)
    rows = []
    if kind == "ai2d_test":
        for i in range(n):
            rows.append({"index": i, "image": b64_image(rng) if i != 2 else 0,   # row 2 reuses row 0's image
                         "question": f"Which part is labelled {chr(65 + i)}?", "A": "stem", "B": "leaf",
                         "C": "root", "D": "flower", "answer": "ABCD"[i % 4], "category": ["parts", "cycle"][i % 2],
                         "split": "test"})
        header = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "split"]
        rows[1]["hint"] = "Look at the arrows."
    elif kind == "mmmu_dev_val":
        for i in range(n):
            two = i == 1
            rows.append({"index": f"validation_Art_{i}", "question": "What does <image 1> show?" if not two else
                         "Compare <image 1> and <image 2>.", "A": "a bridge", "B": "a tower",
                         "C": "a river" if i != 3 else "", "D": "", "answer": "AB"[i % 2],
                         "category": "Art", "split": ["dev", "validation"][i % 2],
                         "image": str([b64_image(rng), b64_image(rng)]) if two else b64_image(rng),
                         "image_path": str([f"v{i}_1.png", f"v{i}_2.png"]) if two else f"v{i}.png"})
        header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "split", "image",
                  "image_path"]
    elif kind == "chartqa_test":
        answers = ["12", "3.5", "Yes", "45%", "2019"]
        for i in range(n):
            rows.append({"index": 100 + i, "image": b64_image(rng), "question": f"What is value {i}?",
                         "answer": answers[i % len(answers)], "category": ["human", "augmented"][i % 2]})
        header = ["index", "image", "question", "answer", "category"]
    elif kind == "docvqa_val":
        answers = [["Brown & Co."], ["1985", "1985."], ["total amount"], ["ITC Limited"]]
        for i in range(n):
            rows.append({"index": 7 + i, "image": b64_image(rng), "question": f"What is field {i}?",
                         "answer": str(answers[i % len(answers)])})
        header = ["index", "image", "question", "answer"]
    else:
        raise ValueError(kind)
    return _write_tsv(path, header, rows)
