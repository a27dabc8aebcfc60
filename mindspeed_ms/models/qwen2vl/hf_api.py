"""The Hugging Face methods of `Qwen2VLForConditionalGeneration` that are not math: `generate` and
`save_pretrained` (HF-shaped results, HF key names on disk). The model class mixes this in.

    inputs = processor(text=[prompt], images=[img], return_tensors="np")
    ids = model.generate(**inputs, max_new_tokens=64)          # [B, S + new] int64, as transformers
    processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    model.save_pretrained("out_dir")                           # config.json + model.safetensors

Decoding itself is `inference.generate.generate` (KV cache, M-RoPE positions); the settings follow
transformers' GenerationConfig rules (`inference.generation_config`).
"""
import json
import os

import numpy as np

GENERATION_CONFIG_FILE = "generation_config.json"
_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
               "video_grid_thw")


def read_generation_config(model_dir):
    """`generation_config.json` of an HF directory as a dict, or None when there is none."""
    path = os.path.join(str(model_dir), GENERATION_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "asnumpy"):
        return x.asnumpy()
    if hasattr(x, "detach"):  # a torch tensor handed over from HF code
        return x.detach().cpu().numpy()
    return np.asarray(x)


class HFApiMixin:
    """`generate` and `save_pretrained` for a model with `config` (Qwen2VLConfig), `mm_state_dict()`
    and an optional `generation_config` dict (read from the checkpoint's generation_config.json)."""

    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None,
                 pixel_values_videos=None, video_grid_thw=None, tokenizer=None, seed=None, streamer=None,
                 **generation_kwargs):
        """transformers' `generate` for Qwen2-VL: returns the prompt followed by the new tokens,
        [B, S + T] int64 (T = steps taken; rows that stopped earlier are filled with pad_token_id).

        Settings (`max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`, `num_beams`,
        `length_penalty`, `early_stopping`,
        `repetition_penalty`, `min_new_tokens`, `eos_token_id`, `pad_token_id`, `stop_strings`
        (with `tokenizer=`), `use_cache`, `generation_config=`) override the model's
        generation_config.json, which overrides transformers' defaults. Greedy decoding gives
        transformers' tokens; sampling draws from the same filtered distribution with numpy's
        generator seeded by `seed` (default 0), so its draws differ from torch's.
        `streamer`: an HF streamer (`put`/`end`, e.g. `TextStreamer`) or a callable
        `(next_ids [B], live [B])`. Batches must be left-padded. One difference: with no eos id at
        all, transformers keeps generating into a row that stopped on a stop string while other rows
        go on; here such a row is padded, as with eos."""
        from mindspeed_ms.inference.generate import _as_2d, generate
        from mindspeed_ms.inference.generation_config import logits_processor, resolve, stop_string_check
        from mindspeed_ms.inference.sampling import SamplingConfig

        if input_ids is None:
            raise ValueError("generate needs input_ids (e.g. processor(text=..., return_tensors='np'))")
        ids = _as_2d(_to_numpy(input_ids), "input_ids").astype(np.int64)
        mask = None if attention_mask is None else _as_2d(_to_numpy(attention_mask), "attention_mask")
        g = resolve(getattr(self, "generation_config", None), generation_kwargs, ids.shape[1])
        sampling = SamplingConfig(g.do_sample, g.temperature, g.top_p, g.top_k, 0 if seed is None else int(seed))
        if g.num_beams > 1:
            return self._beam_search(ids, mask, g, streamer, pixel_values=_to_numpy(pixel_values),
                                     image_grid_thw=_to_numpy(image_grid_thw),
                                     pixel_values_videos=_to_numpy(pixel_values_videos),
                                     video_grid_thw=_to_numpy(video_grid_thw))
        rows = list(ids) if mask is None else [r[m > 0] for r, m in zip(ids, mask)]  # prompts without padding
        hook, finish = _streamer_hooks(streamer, ids)
        out = generate(self, ids, mask, _to_numpy(pixel_values), _to_numpy(image_grid_thw),
                       _to_numpy(pixel_values_videos), _to_numpy(video_grid_thw), max_new_tokens=g.max_new_tokens,
                       sampling=sampling, stop_token_ids=g.eos_token_ids, pad_token_id=g.pad_token_id,
                       use_cache=g.use_cache, process_logits=logits_processor(g, ids.shape[1]),
                       stop_check=stop_string_check(g.stop_strings, tokenizer, rows), streamer=hook)
        finish()
        steps = max(len(t) for t in out.tokens)
        new = np.full((ids.shape[0], steps), g.pad_token_id, dtype=np.int64)
        for b, toks in enumerate(out.tokens):
            new[b, :len(toks)] = toks
        return np.concatenate([ids, new], axis=1)

    def _beam_search(self, ids, mask, g, streamer, **vision):
        from mindspeed_ms.inference.beam_search import beam_search
        from mindspeed_ms.inference.generation_config import logits_processor

        if streamer is not None:
            raise ValueError("a streamer cannot be used with beam search (num_beams > 1), as in transformers")
        if ids.shape[0] > 1 and mask is not None and (np.asarray(mask)[:, -1] == 0).any():
            raise ValueError("batched generation needs LEFT padding: the last column of attention_mask has zeros")
        mask = np.ones_like(ids) if mask is None else np.asarray(mask)
        return beam_search(self, ids.astype(np.int32), mask, vision, g.num_beams, g.max_new_tokens,
                           g.eos_token_ids, g.pad_token_id, g.length_penalty, g.early_stopping,
                           logits_processor(g, ids.shape[1])).astype(np.int64)

    def save_pretrained(self, save_directory, overwrite=False):
        """Write an HF Qwen2-VL directory: config.json, model.safetensors (HF key names, fp32) and
        generation_config.json when the model has one. transformers' `from_pretrained` loads it.
        Weights or configs already in `save_directory` are not replaced unless `overwrite=True`."""
        from mindspeed_ms.checkpoint.hf_io import INDEX_FILE, SINGLE_FILE
        from mindspeed_ms.checkpoint.names import mm_to_hf_state_dict
        from mindspeed_ms.checkpoint.safetensors_io import save_safetensors
        from mindspeed_ms.config.model_config import config_to_hf

        d = str(save_directory)
        if os.path.exists(d) and not os.path.isdir(d):
            raise ValueError(f"save_pretrained: {d} exists and is not a directory")
        ours = ("config.json", SINGLE_FILE, GENERATION_CONFIG_FILE)
        if os.path.isdir(d) and not overwrite:
            present = [n for n in os.listdir(d) if n in ours or n == INDEX_FILE or n.endswith(".safetensors")]
            if present:
                raise ValueError(f"save_pretrained: {d} already holds {', '.join(sorted(present))}; choose an empty "
                                 f"directory or pass overwrite=True")
        if overwrite and os.path.isfile(os.path.join(d, INDEX_FILE)):
            raise ValueError(f"save_pretrained: {d} holds a sharded checkpoint ({INDEX_FILE}) that a single "
                             f"{SINGLE_FILE} would not replace; choose another directory")
        hf_config = config_to_hf(self.config)
        hf_config["torch_dtype"] = "float32"  # the weights are written as they are held: fp32
        state = mm_to_hf_state_dict(self.mm_state_dict(), hf_config)
        os.makedirs(d, exist_ok=True)
        files = {SINGLE_FILE: lambda p: save_safetensors(state, p, metadata={"format": "pt"}),
                 "config.json": lambda p: _write_json(hf_config, p)}
        gen = getattr(self, "generation_config", None)
        if gen:
            files[GENERATION_CONFIG_FILE] = lambda p: _write_json(gen, p)
        for name, write in files.items():  # each file whole or not at all
            tmp = os.path.join(d, f".{name}.tmp")
            write(tmp)
            os.replace(tmp, os.path.join(d, name))
        return d


def _write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _streamer_hooks(streamer, prompt_ids):
    """(per-step hook for `inference.generate.generate`, end call) for an HF-style streamer object
    (`put(prompt)`, `put(new_ids)` each step, `end()`) or a plain callable."""
    if streamer is None:
        return None, lambda: None
    if callable(streamer) and not hasattr(streamer, "put"):
        return streamer, lambda: None
    streamer.put(prompt_ids)
    return (lambda next_ids, live: streamer.put(np.asarray(next_ids))), streamer.end
