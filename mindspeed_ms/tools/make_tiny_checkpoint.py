"""Write a seeded, randomly initialised tiny Qwen2-VL checkpoint in HuggingFace format.

    python -m mindspeed_ms.tools.make_tiny_checkpoint OUT_DIR [--mm-model model_tiny.json] [--seed 1234]

OUT_DIR receives config.json, model.safetensors (HF key names), the real Qwen2-VL tokenizer files
(built offline by mindspeed_ms.tools.build_tokenizer), preprocessor_config.json and
generation_config.json: exactly what `mm-convert Qwen2VLConverter hf_to_mm` and data.json's
`model_name_or_path` expect from a downloaded checkpoint. Weights are drawn with numpy from
--seed (N(0, init_method_std) for matrices, 1 for norm scales, 0 for biases), so the same seed
always gives the same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_JSON = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "mindspore", "qwen2vl",
                                  "model_tiny.json")


def random_mm_state_dict(cfg, seed: int) -> dict:
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in mm_param_shapes(cfg).items():
        std = cfg.vision.init_method_std if name.startswith("image_encoder") else cfg.text.init_method_std
        if name.endswith(".bias"):
            arr = np.zeros(shape, np.float32)
        elif len(shape) == 1:                        # norm scales
            arr = np.ones(shape, np.float32)
        else:
            arr = (rng.standard_normal(shape) * std).astype(np.float32)
        out[name] = arr
    return out


def make_tiny_checkpoint(out_dir: str, model_json: str = DEFAULT_MODEL_JSON, seed: int = 1234) -> str:
    from mindspeed_ms.checkpoint.hf_io import save_hf_state_dict
    from mindspeed_ms.checkpoint.names import mm_to_hf_state_dict
    from mindspeed_ms.config.model_config import config_to_hf, load_model_json
    from mindspeed_ms.tools.build_tokenizer import build_tokenizer

    cfg = load_model_json(model_json)
    hf_config = config_to_hf(cfg)
    hf_sd = mm_to_hf_state_dict(random_mm_state_dict(cfg, seed), hf_config)
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer(out_dir, None, with_processor=True)
    save_hf_state_dict(hf_sd, out_dir, hf_config)
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                   "do_sample": False, "transformers_version": "4.57.1"}, f, indent=2)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.tools.make_tiny_checkpoint",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="HF checkpoint directory to write (created if missing)")
    p.add_argument("--mm-model", default=DEFAULT_MODEL_JSON, help="model.json giving the sizes (default: the tiny one)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random weights")
    a = p.parse_args(argv)
    try:
        out = make_tiny_checkpoint(a.out_dir, a.mm_model, a.seed)
    except (OSError, ValueError) as e:
        print(f"make_tiny_checkpoint: error: {e}", file=sys.stderr)
        return 1
    n = sum(1 for _ in open(os.path.join(out, "config.json")))
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.models.registry import family_of
    family = family_of(load_model_json(a.mm_model)).display
    print(f"wrote a random tiny {family} checkpoint (seed {a.seed}) to {out} ({n} config lines, tokenizer, "
          f"preprocessor and generation configs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
