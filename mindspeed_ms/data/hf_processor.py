"""`Qwen2VLProcessor`: transformers' processor API on our tokenizer, image/video processor and the
checkpoint's own chat template, numpy out, no torch.

    from mindspeed_ms.data import Qwen2VLProcessor
    proc = Qwen2VLProcessor.from_pretrained(HF_DIR)
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    inputs = proc(text=[text], images=[img], return_tensors="np")   # input_ids, attention_mask,
    out = model.generate(**inputs, max_new_tokens=64)                # pixel_values, image_grid_thw
    proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

As in transformers, each `<|image_pad|>` (`<|video_pad|>`) of the text becomes
t*h*w / merge_size^2 copies for its image (video), in order over the batch, and the text is then
tokenized. Unlike the training data path (`data.template`, `inference.prompt`), nothing here applies
MindSpeed-MM's pre-resize: the output is what transformers' processor gives.

The chat template is the checkpoint's: `chat_template.json` or `chat_template.jinja` (processor
files), else `tokenizer_config.json`'s `chat_template`; it is rendered with jinja2 the way
transformers renders it (sandboxed, trim_blocks/lstrip_blocks, `raise_exception`, `tojson`).
"""
import json
import os

import numpy as np

from mindspeed_ms.data.processor import Qwen2VLImageProcessor

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
_PLACEHOLDER = "<|placeholder|>"


class ProcessorOutput(dict):
    """A dict (so `model.generate(**out)` works) whose keys are also attributes, as HF's BatchFeature."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_chat_template(model_dir):
    """The chat template of an HF directory: chat_template.json, chat_template.jinja, then
    tokenizer_config.json (transformers' order). None when there is none."""
    path = os.path.join(model_dir, "chat_template.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                return json.load(f)["chat_template"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: expected a JSON object with a 'chat_template' string ({e})") from None
    path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                return json.load(f).get("chat_template")
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
    return None


def _jinja_env():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class Qwen2VLProcessor:
    """Tokenizer + `Qwen2VLImageProcessor` (images and videos) + chat template."""

    model_input_names = ["input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                         "pixel_values_videos", "video_grid_thw"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None):
        if tokenizer is None:
            raise ValueError("Qwen2VLProcessor needs a tokenizer (use Qwen2VLProcessor.from_pretrained(HF_DIR))")
        self.image_processor = image_processor or Qwen2VLImageProcessor()
        self.video_processor = self.image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token, self.video_token = IMAGE_TOKEN, VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self._env = None

    @classmethod
    def from_pretrained(cls, model_dir, **image_processor_overrides):
        """Tokenizer files, preprocessor_config.json and the chat template of an HF directory."""
        from mindspeed_ms.data.tokenizer import load_tokenizer

        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"Qwen2VLProcessor.from_pretrained: {model_dir} is not a directory (pass the "
                                    f"HF model directory with tokenizer.json and preprocessor_config.json)")
        return cls(Qwen2VLImageProcessor.from_pretrained(model_dir, **image_processor_overrides),
                   load_tokenizer(model_dir), read_chat_template(model_dir))

    # ------------------------------------------------------------------ text + vision -> ids
    def __call__(self, images=None, text=None, videos=None, return_tensors=None, padding=False,
                 padding_side=None, truncation=None, max_length=None, min_pixels=None, max_pixels=None, **kwargs):
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: this processor returns numpy arrays ('np') or "
                             f"lists (None); torch tensors are not produced here")
        if kwargs:
            raise TypeError(f"Qwen2VLProcessor got unexpected arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError("Qwen2VLProcessor needs text= (one string or a list of strings)")
        vision = {}
        pixel_kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        if images is not None:
            vision.update(self.image_processor(images=images, **pixel_kw))
        if videos is not None:
            vision.update(self.image_processor(videos=videos, **pixel_kw))
        texts = [text] if isinstance(text, str) else list(text)
        merge = self.image_processor.merge_size ** 2
        texts = self._expand(texts, self.image_token, vision.get("image_grid_thw"), merge, "image")
        texts = self._expand(texts, self.video_token, vision.get("video_grid_thw"), merge, "video")
        tok_kw = {"padding": padding}
        if padding_side is not None:
            tok_kw["padding_side"] = padding_side
        if truncation is not None:
            tok_kw["truncation"] = truncation
        if max_length is not None:
            tok_kw["max_length"] = max_length
        enc = self.tokenizer(texts, return_tensors=None, **tok_kw)
        self._check_tokens(enc["input_ids"], vision)
        out = ProcessorOutput()
        for key in ("input_ids", "attention_mask"):
            if key in enc:
                out[key] = self._as(enc[key], return_tensors, key)
        out.update(vision)
        return out

    @staticmethod
    def _expand(texts, token, grids, merge, what):
        if grids is None:
            n = sum(t.count(token) for t in texts)
            if n:
                raise ValueError(f"the text has {n} {token} token(s) but no {what}s were given")
            return texts
        counts = (np.asarray(grids).prod(axis=1) // merge).tolist()
        n = sum(t.count(token) for t in texts)
        if n != len(counts):
            raise ValueError(f"the text has {n} {token} token(s) but {len(counts)} {what}(s) were given: put one "
                             f"{token} (e.g. via apply_chat_template) per {what}")
        out, k = [], 0
        for t in texts:
            while token in t:
                t = t.replace(token, _PLACEHOLDER * int(counts[k]), 1)
                k += 1
            out.append(t.replace(_PLACEHOLDER, token))
        return out

    def _check_tokens(self, ids, vision):
        """Truncation must not cut vision tokens (transformers raises the same way)."""
        for key, tok, grid in (("image", self.image_token_id, "image_grid_thw"),
                               ("video", self.video_token_id, "video_grid_thw")):
            if grid not in vision:
                continue
            want = int(np.asarray(vision[grid]).prod(axis=1).sum() // self.image_processor.merge_size ** 2)
            got = sum(int(np.sum(np.asarray(row) == tok)) for row in ids)
            if got != want:
                raise ValueError(f"{key} tokens in the text ({got}) do not match the {key} features ({want}): the "
                                 f"text was probably truncated; raise max_length or drop truncation")

    @staticmethod
    def _as(rows, return_tensors, key):
        if return_tensors is None:
            return rows
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError(f"{key} rows have different lengths {sorted(lengths)}: pass padding=True "
                             f"(and padding_side='left' for generation) to get one array")
        return np.asarray(rows, dtype=np.int64)

    # ------------------------------------------------------------------ chat template
    def apply_chat_template(self, conversation, chat_template=None, add_generation_prompt=False, tokenize=False,
                            return_dict=False, return_tensors=None, continue_final_message=False, **kwargs):
        """Render one conversation (list of {"role", "content"}) or a list of them with the chat
        template. `content` is a string or a list of parts ({"type": "text", "text"},
        {"type": "image", "image": PATH_OR_PIL}, {"type": "video", "video": PATH_OR_FRAMES}); other
        keywords (e.g. `add_vision_id=True`) reach the template. With `tokenize=True` the images and
        videos named in the parts are processed too: `return_dict=True` gives the processor output,
        otherwise the input_ids."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this processor has no chat template (no chat_template.json, chat_template.jinja or "
                             "tokenizer_config.json chat_template in the model directory): pass chat_template=")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        convs = conversation if batched else [conversation]
        if self._env is None:
            self._env = _jinja_env()
        compiled = self._env.from_string(template)
        special = {k: v for k, v in self.tokenizer.special_tokens_map.items() if isinstance(v, str)}
        texts = []
        for conv in convs:
            conv = [dict(m) for m in conv]
            text = compiled.render(messages=conv, add_generation_prompt=add_generation_prompt, **special, **kwargs)
            if continue_final_message:
                final = conv[-1]["content"]
                final = final if isinstance(final, str) else "".join(p.get("text", "") for p in final
                                                                        if isinstance(p, dict))
                cut = text.rfind(final.strip())
                if cut < 0:
                    raise ValueError("continue_final_message: the final message's text is not in the rendered prompt")
                text = text[:cut + len(final.strip())]
            texts.append(text)
        if not tokenize:
            return texts if batched else texts[0]
        images = [im for conv in convs for im in _parts(conv, "image")]
        videos = [v for conv in convs for v in _parts(conv, "video")]
        out = self(text=texts, images=images or None, videos=videos or None,
                   return_tensors=return_tensors, padding=len(texts) > 1)
        if return_dict:
            return out
        return out["input_ids"] if batched or return_tensors else out["input_ids"][0]

    # ------------------------------------------------------------------ ids -> text
    def batch_decode(self, sequences, **kwargs):
        return self.tokenizer.batch_decode(np.asarray(sequences).tolist() if hasattr(sequences, "shape")
                                           else sequences, **kwargs)

    def decode(self, token_ids, **kwargs):
        return self.tokenizer.decode(np.asarray(token_ids).tolist() if hasattr(token_ids, "shape")
                                     else token_ids, **kwargs)


def _parts(conv, kind):
    """The images (kind="image") or videos of a conversation's content parts, in order."""
    found = []
    for m in conv:
        content = m.get("content")
        if isinstance(content, str) or content is None:
            continue
        for p in content:
            if not isinstance(p, dict):
                continue
            if p.get("type") == kind or kind in p:
                src = p.get(kind, p.get("path", p.get("url")))
                if src is None:
                    raise ValueError(f"a {kind} part has no '{kind}', 'path' or 'url' to load it from: {p}")
                found.append(_load_source(src, kind))
    return found


def _load_source(src, kind):
    from mindspeed_ms.data.image_io import load_image

    if kind == "image" and isinstance(src, str):
        if src.startswith("data:"):
            from mindspeed_ms.data.media_url import decode_data_url
            return load_image(decode_data_url(src))
        if src.startswith(("http://", "https://")):
            raise ValueError(f"image {src[:60]}: URLs are not downloaded here; pass a local path or a data URL")
        return load_image(src[len("file://"):] if src.startswith("file://") else src)
    return src
