"""HF `GenerationConfig` semantics for `model.generate(...)`: which settings a call ends up with.

As in transformers, the settings are, from lowest to highest priority: GenerationConfig's own
defaults (`max_length=20`, `top_k=50`, ...), the model's `generation_config.json`, then the keyword
arguments of the call. A setting that would change the output and that we do not implement
(beam sampling, `no_repeat_ngram_size`, ...) is an error naming the key, never silently ignored;
keys that only shape what HF returns around the tokens (`output_scores`, ...) are accepted with
their default value only.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from mindspeed_ms.inference.sampling import repetition_penalized

# GenerationConfig defaults of transformers 4.57 for the keys we act on
HF_DEFAULTS = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None,
    "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "num_beams": 1,
    "repetition_penalty": 1.0, "eos_token_id": None, "pad_token_id": None, "bos_token_id": None,
    "stop_strings": None, "use_cache": True, "num_return_sequences": 1, "length_penalty": 1.0,
    "early_stopping": False,
}
# keys that change the tokens and that we refuse unless they hold the value that does nothing
_NEUTRAL = {
    "num_beam_groups": 1, "diversity_penalty": 0.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "force_words_ids": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None,
    "top_h": None, "penalty_alpha": None, "guidance_scale": None, "sequence_bias": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "constraints": None, "prompt_lookup_num_tokens": None, "assistant_model": None,
    "output_scores": False, "output_logits": False, "output_attentions": False,
    "output_hidden_states": False, "return_dict_in_generate": False, "dola_layers": None,
    "watermarking_config": None, "low_memory": None,
}
# bookkeeping keys of generation_config.json files
_METADATA = {"transformers_version", "_from_model_config", "decoder_start_token_id", "cache_implementation",
             "trust_remote_code", "_commit_hash"}


@dataclass
class ResolvedGeneration:
    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    eos_token_ids: Tuple[int, ...]
    pad_token_id: int
    stop_strings: List[str]
    use_cache: bool
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: object = False


def _ids(value) -> Tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(int(v) for v in value)
    return (int(value),)


def resolve(model_config: Optional[dict], kwargs: dict, prompt_len: int) -> ResolvedGeneration:
    """The settings of one `generate` call. `model_config`: the model's generation_config.json dict
    (or None); `kwargs`: the call's generation keywords (a `generation_config=` dict or object is
    merged first); `prompt_len`: input length, for `max_length` / `min_length`."""
    cfg = dict(HF_DEFAULTS)
    explicit = dict(kwargs)
    gc = explicit.pop("generation_config", None)
    layers = [model_config or {}]
    if gc is not None:
        layers.append(gc if isinstance(gc, dict) else gc.to_dict())
    layers.append(explicit)
    for i, layer in enumerate(layers):
        for key, value in layer.items():
            if key in _METADATA:
                continue
            if key in _NEUTRAL:
                if value != _NEUTRAL[key] and not (value is None or (value == [] and _NEUTRAL[key] is None)):
                    where = "generation_config.json" if i == 0 else "generate()"
                    raise ValueError(f"{where}: {key}={value!r} is not supported by this generate (only the HF "
                                     f"default {_NEUTRAL[key]!r}, which has no effect)")
                continue
            if key not in cfg:
                if i == 0:  # an unknown key in a file: HF keeps it as an attribute and ignores it
                    continue
                raise TypeError(f"generate() got an unexpected keyword argument {key!r}")
            if value is not None or key in ("max_new_tokens", "eos_token_id", "stop_strings", "pad_token_id"):
                cfg[key] = value
    beams = int(cfg["num_beams"])
    if beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {beams}")
    if beams > 1 and cfg["do_sample"]:
        raise ValueError("num_beams > 1 with do_sample=True (beam sampling) is not implemented here; use one of them")
    if beams > 1 and cfg["stop_strings"]:
        raise ValueError("stop_strings with num_beams > 1 are not implemented here")
    if cfg["early_stopping"] not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {cfg['early_stopping']!r}")
    if int(cfg["num_return_sequences"]) != 1:
        raise ValueError(f"num_return_sequences={cfg['num_return_sequences']}: only 1 is supported; repeat the "
                         f"prompt in the batch for several samples")
    max_new = cfg["max_new_tokens"]
    if max_new is None:
        max_new = int(cfg["max_length"]) - prompt_len
        if max_new < 1:
            raise ValueError(f"the prompt has {prompt_len} tokens and max_length is {cfg['max_length']}: nothing to "
                             f"generate; pass max_new_tokens")
    max_new = int(max_new)
    if max_new < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
    min_new = cfg["min_new_tokens"]
    if min_new is None:
        min_new = max(0, int(cfg["min_length"] or 0) - prompt_len)
    eos = _ids(cfg["eos_token_id"])
    pad = cfg["pad_token_id"]
    if pad is None:
        pad = eos[0] if eos else 0  # transformers: pad_token_id falls back to the first eos id
    stops = cfg["stop_strings"]
    if isinstance(stops, str):
        stops = [stops]
    do_sample = bool(cfg["do_sample"])
    rep = float(cfg["repetition_penalty"])
    if not rep > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {rep}")
    return ResolvedGeneration(
        max_new_tokens=max_new, min_new_tokens=int(min_new), do_sample=do_sample,
        temperature=float(cfg["temperature"]), top_k=int(cfg["top_k"] or 0), top_p=float(cfg["top_p"]),
        repetition_penalty=rep, eos_token_ids=eos, pad_token_id=int(pad), stop_strings=list(stops or []),
        use_cache=bool(cfg["use_cache"]), num_beams=beams, length_penalty=float(cfg["length_penalty"]),
        early_stopping=cfg["early_stopping"])


def logits_processor(g: ResolvedGeneration, prompt_len: int):
    """HF's logits processors that come before the warpers, as one `process_logits(ids, logits)`:
    repetition penalty (over prompt and generated ids) and min_new_tokens (eos ids suppressed).
    None when neither applies."""
    if g.repetition_penalty == 1.0 and not (g.min_new_tokens and g.eos_token_ids):
        return None
    eos = np.array(g.eos_token_ids, dtype=np.int64)

    def process(ids, logits):
        scores = np.array(logits, dtype=np.float32, copy=True)
        if g.repetition_penalty != 1.0:
            rows = np.arange(ids.shape[0])[:, None]
            scores[rows, ids] = repetition_penalized(scores[rows, ids], g.repetition_penalty)
        if g.min_new_tokens and ids.shape[1] - prompt_len < g.min_new_tokens and eos.size:
            scores[:, eos] = -np.inf
        return scores
    return process


def stop_string_check(stop_strings, tokenizer, prompt_rows):
    """`stop_check(row, new_tokens)` for `inference.generate.generate`: True once a stop string occurs
    in the decoded text and overlaps the last token (transformers' StopStringCriteria rule; the match
    may begin inside the prompt). `prompt_rows`: the prompt ids of each row (padding removed)."""
    if not stop_strings:
        return None
    if tokenizer is None:
        raise ValueError("stop_strings need the tokenizer: pass generate(..., tokenizer=processor.tokenizer)")
    longest = max(len(s) for s in stop_strings)

    def check(row, new_tokens):
        # a token decodes to at least one character, except pieces of a multi-byte character:
        # a window of 4 tokens per character is plenty
        window = (list(prompt_rows[row]) + list(new_tokens))[-(4 * longest + 1):]
        text = tokenizer.decode(window)
        before = tokenizer.decode(window[:-1])
        start = max(0, len(before) - longest + 1)
        return any(text.find(s, start) != -1 and text.find(s, start) + len(s) > len(before) for s in stop_strings)
    return check
