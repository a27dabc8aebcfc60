"""Conversation + images -> the model's prompt inputs, exactly as training encodes them.

The same pieces as the training data path (mindspeed_ms.data): MindSpeed-MM's image pre-resize with
data.json's `image_max_pixels` / `image_min_pixels`, `Qwen2VLImageProcessor`, `<image>` expansion and
the `qwen2vl` template (default system prompt, `<|im_start|>assistant\\n` at the end). A model
therefore sees at inference the very token layout it was fine-tuned on.
"""
import numpy as np

from mindspeed_ms.data.image_io import load_image, pre_resize, regularize_video
from mindspeed_ms.data.processor import Qwen2VLImageProcessor
from mindspeed_ms.data.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, expand_vision_placeholders, get_template
from mindspeed_ms.data.tokenizer import load_tokenizer

# MindSpeed-MM's defaults when data.json has no preprocess_parameters (see reference section 3)
DEFAULT_IMAGE_MAX_PIXELS = 768 * 768
DEFAULT_IMAGE_MIN_PIXELS = 32 * 32
DEFAULT_VIDEO = {"video_max_pixels": 256 * 256, "video_min_pixels": 16 * 16, "video_fps": 2.0, "video_maxlen": 128}


class PromptBuilder:
    """`build(messages, images)` -> dict(input_ids [S] int64, pixel_values, image_grid_thw);
    `batch(prompts)` left-pads several built prompts into one generation batch."""

    def __init__(self, tokenizer_dir, image_max_pixels=None, image_min_pixels=None, system=None, video=None):
        import os

        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.template = get_template("qwen2vl", self.tokenizer)
        has_cfg = os.path.isfile(os.path.join(tokenizer_dir, "preprocessor_config.json"))
        self.processor = Qwen2VLImageProcessor.from_pretrained(tokenizer_dir) if has_cfg else Qwen2VLImageProcessor()
        self.max_pixels = image_max_pixels or DEFAULT_IMAGE_MAX_PIXELS
        self.min_pixels = image_min_pixels or DEFAULT_IMAGE_MIN_PIXELS
        self.system = system
        # data.json's video_max_pixels / video_min_pixels / video_fps / video_maxlen (MindSpeed-MM defaults)
        self.video = {**DEFAULT_VIDEO, **{k: v for k, v in (video or {}).items() if k in DEFAULT_VIDEO and v}}
        self.pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.stop_ids = [self.template.eos_id]

    def build(self, messages, images=(), videos=(), system=None):
        """`messages`: [{"role", "content"}...] alternating user/assistant and ending with the user
        turn to answer. With images (videos) but no `<image>` (`<video>`) tag anywhere, one tag per
        item is put in front of the last user message (what a chat user means). Images: paths,
        bytes or PIL images; videos: what `load_video_frames` reads (file, frame directory, GIF,
        frame list). `system` overrides the builder's system prompt for this prompt."""
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message (the question to answer)")
        messages = [dict(m) for m in messages]
        images, videos = list(images), list(videos)
        for items, tag in ((videos, VIDEO_PLACEHOLDER), (images, IMAGE_PLACEHOLDER)):
            if items and not any(tag in m["content"] for m in messages):
                messages[-1]["content"] = tag * len(items) + messages[-1]["content"]
        out = {}
        tokens, vtokens = [], []
        merge = self.processor.merge_size ** 2
        if images:
            pil = [pre_resize(load_image(p), self.max_pixels, self.min_pixels) for p in images]
            r = self.processor(images=pil)
            out["pixel_values"], out["image_grid_thw"] = r["pixel_values"], r["image_grid_thw"]
            tokens = (r["image_grid_thw"].prod(axis=1) // merge).tolist()
        if videos:
            v = self.video
            frames = [regularize_video(src, v["video_fps"], v["video_maxlen"], v["video_max_pixels"],
                                       v["video_min_pixels"]) for src in videos]
            r = self.processor(videos=frames)
            out["pixel_values_videos"], out["video_grid_thw"] = r["pixel_values_videos"], r["video_grid_thw"]
            vtokens = (r["video_grid_thw"].prod(axis=1) // merge).tolist()
        expanded = expand_vision_placeholders(messages + [{"role": "assistant", "content": ""}], tokens, vtokens)
        pairs = self.template.encode_pairs(expanded, system or self.system)
        ids = [t for src, tgt in pairs[:-1] for t in src + tgt] + pairs[-1][0]
        out["input_ids"] = np.asarray(ids, dtype=np.int64)
        return out

    def batch(self, prompts):
        """Left-padded batch of built prompts: input_ids, attention_mask, and the images in order."""
        s = max(len(p["input_ids"]) for p in prompts)
        ids = np.full((len(prompts), s), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), s), dtype=np.int64)
        for i, p in enumerate(prompts):
            n = len(p["input_ids"])
            ids[i, s - n:] = p["input_ids"]
            mask[i, s - n:] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        for pix, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            having = [p for p in prompts if pix in p]
            if having:
                out[pix] = np.concatenate([p[pix] for p in having])
                out[grid] = np.concatenate([p[grid] for p in having])
        return out

    def decode(self, tokens):
        """Text of generated tokens, without the stop token and other special tokens."""
        return self.tokenizer.decode([t for t in tokens if t not in self.stop_ids], skip_special_tokens=True).strip()
