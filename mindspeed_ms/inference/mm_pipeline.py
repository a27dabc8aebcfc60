"""MindSpeed-MM's Qwen2VlPipeline on this framework: messages -> the HF processor's prompt -> text.

The prompt is what MindSpeed-MM feeds its model (HF `AutoProcessor` + qwen-vl-utils):
- images: opened, converted to RGB, resized with qwen-vl-utils' `smart_resize` (factor 28,
  `min_pixels`/`max_pixels` of the evaluate JSON, else qwen-vl-utils' 4*28*28 .. 16384*28*28)
  and PIL's default bicubic, then the checkpoint's `preprocessor_config.json` image processor;
- text: the checkpoint's own chat template (`chat_template.json`, else the tokenizer's) with one
  user turn (the images, then the text parts, in message order) and the generation prompt; each
  `<|image_pad|>` expanded to the image's merged patch count; tokenized with the tokenizer;
- no image: the prompt text alone, tokenized without a template (MindSpeed-MM's text-only path).
Several prompts are generated together, left-padded; each row's tokens are the same as alone.
"""
import json
import os

import numpy as np
from PIL import Image

from mindspeed_ms.data.processor import Qwen2VLImageProcessor, smart_resize

QWEN_VL_UTILS_MIN_PIXELS = 4 * 28 * 28
QWEN_VL_UTILS_MAX_PIXELS = 16384 * 28 * 28
IMAGE_PAD = "<|image_pad|>"
# Vision patches one forward may hold: the matmul attention of the vision encoder builds dense
# [patches x patches] scores (one 1003520-pixel image, MindSpeed-MM's evaluate min_pixels, is 5120
# patches); larger batches are split (the answers do not change: rows are independent).
MAX_BATCH_PATCHES = 6144


def fetch_image(path, min_pixels=None, max_pixels=None):
    """qwen-vl-utils' fetch_image for a local file: RGB (RGBA over white), resized to multiples of 28."""
    try:
        with Image.open(path[7:] if path.startswith("file://") else path) as im:
            im.load()
            if im.mode == "RGBA":
                rgb = Image.new("RGB", im.size, (255, 255, 255))
                rgb.paste(im, mask=im.split()[3])
            else:
                rgb = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"image {path}: cannot be read as an image ({e})") from None
    w, h = rgb.size
    if max(h, w) / max(1, min(h, w)) > 200:
        raise ValueError(f"image {path}: aspect ratio {max(h, w) / min(h, w):.0f} is over 200 (qwen-vl-utils refuses "
                         f"it too)")
    rh, rw = smart_resize(h, w, factor=28, min_pixels=min_pixels or QWEN_VL_UTILS_MIN_PIXELS,
                          max_pixels=max_pixels or QWEN_VL_UTILS_MAX_PIXELS)
    return rgb.resize((rw, rh))


def _chat_template(tokenizer_dir, tokenizer):
    p = os.path.join(tokenizer_dir, "chat_template.json")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return json.load(f)["chat_template"]
    p = os.path.join(tokenizer_dir, "chat_template.jinja")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            return f.read()
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ValueError(f"{tokenizer_dir}: no chat template (chat_template.json or tokenizer_config.json's "
                     f"chat_template); copy it from the HF checkpoint")


class Qwen2VlPipeline:
    """`encode(messages, min_pixels, max_pixels)` -> prompt inputs; `answer(prompts)` -> texts."""

    def __init__(self, cfg, model, seed=42):
        from mindspeed_ms.data.tokenizer import load_tokenizer

        self.cfg, self.model, self.seed = cfg, model, seed
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        pp = os.path.join(cfg.tokenizer_dir, "preprocessor_config.json")
        self.processor = Qwen2VLImageProcessor.from_pretrained(cfg.tokenizer_dir) if os.path.isfile(pp) \
            else Qwen2VLImageProcessor()
        self.template = _chat_template(cfg.tokenizer_dir, self.tokenizer)
        g = cfg.generation
        self.stop_ids = g.eos_token_id or [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.pad_id = g.pad_token_id if g.pad_token_id is not None else \
            self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def encode(self, message, min_pixels=None, max_pixels=None):
        """`message`: [{"type": "image"|"text", "value": path or text}, ...] -> input_ids [S] and,
        with images, pixel_values / image_grid_thw."""
        images = [m["value"] for m in message if m["type"] == "image"]
        texts = [m for m in message if m["type"] == "text"]
        if any(m["type"] not in ("image", "text") for m in message):
            raise ValueError(f"message parts must be image or text, got {[m['type'] for m in message]}")
        if not images:
            prompt = "".join(m["value"] for m in texts)
            return {"input_ids": np.asarray(self.tokenizer(prompt)["input_ids"], dtype=np.int64)}
        content = [{"type": "image"} if m["type"] == "image" else {"type": "text", "text": m["value"]}
                   for m in message]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=True)
        pil = [fetch_image(p, min_pixels, max_pixels) for p in images]
        r = self.processor(images=pil)
        counts = (np.asarray(r["image_grid_thw"]).prod(axis=1) // self.processor.merge_size ** 2).tolist()
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"the chat template placed {len(pieces) - 1} image tokens for {len(counts)} images")
        text = pieces[0] + "".join(IMAGE_PAD * n + piece for n, piece in zip(counts, pieces[1:]))
        ids = self.tokenizer(text)["input_ids"]
        return {"input_ids": np.asarray(ids, dtype=np.int64), "pixel_values": r["pixel_values"],
                "image_grid_thw": r["image_grid_thw"]}

    def _batch(self, prompts):
        s = max(len(p["input_ids"]) for p in prompts)
        ids = np.full((len(prompts), s), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), s), dtype=np.int64)
        for i, p in enumerate(prompts):
            n = len(p["input_ids"])
            ids[i, s - n:], mask[i, s - n:] = p["input_ids"], 1
        out = {"input_ids": ids, "attention_mask": mask}
        with_images = [p for p in prompts if "pixel_values" in p]
        if with_images:
            out["pixel_values"] = np.concatenate([p["pixel_values"] for p in with_images])
            out["image_grid_thw"] = np.concatenate([p["image_grid_thw"] for p in with_images])
        return out

    def answer(self, prompts):
        """Texts for encoded prompts (decoded with special tokens skipped, spaces untouched)."""
        out, group, patches = [], [], 0
        for p in prompts:
            n = len(p.get("pixel_values", ()))
            if group and patches + n > MAX_BATCH_PATCHES:
                out += self._answer(group)
                group, patches = [], 0
            group.append(p)
            patches += n
        return out + (self._answer(group) if group else [])

    def _answer(self, prompts):
        from mindspeed_ms.inference.generate import generate
        from mindspeed_ms.inference.generation_settings import ProcessedTokenChooser

        g = self.cfg.generation
        limits = [max(1, g.new_token_limit(len(p["input_ids"]))) for p in prompts]
        batch = self._batch(prompts)
        chooser = ProcessedTokenChooser(g, self.seed, [p["input_ids"] for p in prompts])
        out = generate(self.model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                       batch.get("image_grid_thw"), max_new_tokens=max(limits), sampling=chooser,
                       stop_token_ids=self.stop_ids, pad_token_id=self.pad_id, use_cache=g.use_cache)
        return [self.tokenizer.decode(toks[:lim], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                for toks, lim in zip(out.tokens, limits)]


def load_mm_model(load, model_cfg):
    """Qwen2-VL with the latest iteration's weights of a MindSpeed-MM checkpoint directory."""
    from mindspeed_ms.checkpoint.layout import LATEST_FILE
    from mindspeed_ms.inference.loading import model_from_mm_checkpoint

    if not load or not os.path.isdir(load):
        raise ValueError(f"--load {load}: no such directory (a MindSpeed-MM checkpoint, e.g. the output of "
                         f"mm-convert Qwen2VLConverter hf_to_mm or a training --save directory)")
    if not os.path.isfile(os.path.join(load, LATEST_FILE)):
        raise ValueError(f"--load {load} holds no checkpoint: {LATEST_FILE} is missing (convert an HF checkpoint "
                         f"with mm-convert Qwen2VLConverter hf_to_mm, or point at a training --save directory)")
    model, tag = model_from_mm_checkpoint(load, model_cfg, None, "the model of --mm-model")
    model.set_train(False)
    return model, tag
