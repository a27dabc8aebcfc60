"""`generation_config` of MindSpeed-MM's inference / evaluate JSON -> how tokens are chosen here.

MindSpeed-MM's Qwen2VlPipeline calls its generate with `do_sample = temperature > 0` (the JSON's
`do_sample` is overridden), the JSON's `temperature` and `max_new_tokens`, and every other key from
the JSON: logits processors (repetition penalty, minimum length, suppressed tokens), then, when
sampling, HF's warpers in HF's order (temperature, top-k, top-p), and the stop ids `eos_token_id`.
Those are applied here the same way. A key whose value would change the output in a way this
framework does not implement prints a start-up notice; a mode MindSpeed-MM's generate itself
refuses (beam search, constrained or assisted decoding, contrastive search) is an error.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from mindspeed_ms.inference.sampling import SamplingConfig, TokenChooser, repetition_penalized


class GenerationConfigError(ValueError):
    pass


# HF GenerationConfig keys (and MindSpeed-MM's own: kv_cache, split_batch, num_return_groups,
# the vision token ids) with their defaults; "used" = applied here, "noop" = changes nothing of the
# generated text when left at the default, else a notice.
_USED = {"temperature", "top_k", "top_p", "max_new_tokens", "max_length", "eos_token_id", "pad_token_id",
         "repetition_penalty", "min_length", "min_new_tokens", "suppress_tokens", "begin_suppress_tokens",
         "use_cache", "kv_cache", "do_sample", "bos_token_id", "num_beams", "image_token_id", "video_token_id",
         "vision_start_token_id", "renormalize_logits"}
_DEFAULTS = {
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "output_logits": None,
    "return_dict_in_generate": False, "return_legacy_cache": None, "constraints": None, "force_words_ids": None,
    "prompt_lookup_num_tokens": None, "guidance_scale": None, "bad_words_ids": None, "diversity_penalty": 0.0,
    "early_stopping": False, "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "exponential_decay_length_penalty": None,
    "forced_bos_token_id": None, "forced_decoder_ids": None, "forced_eos_token_id": None, "length_penalty": 1.0,
    "low_memory": None, "max_time": None, "no_repeat_ngram_size": 0, "num_assistant_tokens": 5,
    "num_assistant_tokens_schedule": "heuristic", "num_beam_groups": 1, "num_return_groups": 1,
    "num_return_sequences": 1, "penalty_alpha": None, "remove_invalid_values": False, "sequence_bias": None,
    "typical_p": 1.0, "dola_layers": None, "cache_implementation": None, "cache_config": None, "min_p": None,
    "token_healing": False, "watermarking_config": None, "decoder_start_token_id": None,
    "max_matching_ngram_size": None, "stop_strings": None, "split_batch": False,
}
# keys only beam search / assisted decoding read: no effect with num_beams 1 whatever their value
_BEAM_ONLY = {"early_stopping", "length_penalty", "num_assistant_tokens", "num_assistant_tokens_schedule",
              "max_matching_ngram_size", "low_memory"}
# keys MindSpeed-MM's generate does not read at all
_NOT_READ_BY_MM = {"dola_layers", "cache_implementation", "cache_config", "min_p", "token_healing",
                   "watermarking_config", "stop_strings", "split_batch", "num_return_groups", "return_legacy_cache",
                   "decoder_start_token_id", "output_logits"}


@dataclass
class GenerationSettings:
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None
    max_length: int = 20
    eos_token_id: List[int] = field(default_factory=list)
    pad_token_id: Optional[int] = None
    repetition_penalty: float = 1.0
    min_length: int = 0
    min_new_tokens: Optional[int] = None
    suppress_tokens: List[int] = field(default_factory=list)
    begin_suppress_tokens: List[int] = field(default_factory=list)
    use_cache: bool = True
    vision_token_ids: dict = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)

    @property
    def do_sample(self):
        return self.temperature is not None and self.temperature > 0

    def sampling(self, seed):
        if not self.do_sample:
            return SamplingConfig(do_sample=False, seed=seed)
        return SamplingConfig(do_sample=True, temperature=float(self.temperature),
                              top_p=1.0 if self.top_p is None else float(self.top_p),
                              top_k=int(self.top_k or 0), seed=seed)

    def new_token_limit(self, prompt_len):
        """How many tokens a prompt of `prompt_len` tokens may get (max_new_tokens wins over max_length)."""
        if self.max_new_tokens is not None:
            return int(self.max_new_tokens)
        return int(self.max_length) - int(prompt_len)


def _ids(value, where, key):
    if value is None:
        return []
    vals = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise GenerationConfigError(f"{where}: generation_config.{key} must be a token id or a list of them, "
                                    f"got {value!r}")
    return list(vals)


def _num(value, where, key, typ=(int, float), lo=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, typ):
        raise GenerationConfigError(f"{where}: generation_config.{key} must be a number, got {value!r}")
    if lo is not None and value < lo:
        raise GenerationConfigError(f"{where}: generation_config.{key} must be >= {lo}, got {value!r}")
    return value


def read_generation_config(gc, where):
    """GenerationSettings from the JSON's `generation_config` object (errors name the key and file)."""
    if not isinstance(gc, dict):
        raise GenerationConfigError(f"{where}: generation_config must be a JSON object")
    known = _USED | set(_DEFAULTS)
    for k in gc:
        if k not in known:
            raise GenerationConfigError(f"{where}: unknown key 'generation_config.{k}'; known: the HF "
                                        f"GenerationConfig keys of MindSpeed-MM's inference JSON "
                                        f"({', '.join(sorted(known))})")
    num_beams = gc.get("num_beams", 1)
    if num_beams not in (None, 1):
        raise GenerationConfigError(f"{where}: generation_config.num_beams = {num_beams}: beam search is not "
                                    f"implemented (MindSpeed-MM's generate raises 'other generation modes not "
                                    f"implemented' too); set it to 1")
    for k in ("constraints", "force_words_ids", "prompt_lookup_num_tokens"):
        if gc.get(k) is not None:
            raise GenerationConfigError(f"{where}: generation_config.{k} = {gc[k]!r} selects constrained/assisted "
                                        f"decoding, which MindSpeed-MM's generate does not implement either; "
                                        f"set it to null")
    temp = _num(gc.get("temperature", 1.0), where, "temperature", lo=0)
    top_k = _num(gc.get("top_k", 50), where, "top_k", int, lo=0)
    if not (temp is not None and temp > 0) and gc.get("penalty_alpha") and (top_k or 0) > 1:
        raise GenerationConfigError(f"{where}: generation_config.penalty_alpha with greedy decoding is contrastive "
                                    f"search, which MindSpeed-MM's generate does not implement; set it to null")
    s = GenerationSettings(
        temperature=temp, top_k=top_k, top_p=_num(gc.get("top_p", 1.0), where, "top_p"),
        max_new_tokens=_num(gc.get("max_new_tokens"), where, "max_new_tokens", int, lo=1),
        max_length=_num(gc.get("max_length", 20), where, "max_length", int, lo=1),
        eos_token_id=_ids(gc.get("eos_token_id"), where, "eos_token_id"),
        pad_token_id=gc.get("pad_token_id"),
        repetition_penalty=_num(gc.get("repetition_penalty", 1.0), where, "repetition_penalty") or 1.0,
        min_length=_num(gc.get("min_length", 0), where, "min_length", int, lo=0) or 0,
        min_new_tokens=_num(gc.get("min_new_tokens"), where, "min_new_tokens", int, lo=0),
        suppress_tokens=_ids(gc.get("suppress_tokens"), where, "suppress_tokens"),
        begin_suppress_tokens=_ids(gc.get("begin_suppress_tokens"), where, "begin_suppress_tokens"),
        use_cache=bool(gc.get("use_cache", True)) and bool(gc.get("kv_cache", True)),
        vision_token_ids={k: gc[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id")
                          if gc.get(k) is not None},
    )
    if s.do_sample and s.top_p is not None and not 0 < s.top_p <= 1:
        raise GenerationConfigError(f"{where}: generation_config.top_p must be in (0, 1], got {s.top_p}")
    if s.repetition_penalty <= 0:
        raise GenerationConfigError(f"{where}: generation_config.repetition_penalty must be > 0")
    if "do_sample" in gc and bool(gc["do_sample"]) != s.do_sample:
        s.notices.append(f"generation_config.do_sample = {gc['do_sample']} is replaced by temperature > 0 "
                         f"({'sampling' if s.do_sample else 'greedy'}), as MindSpeed-MM's Qwen2VlPipeline does")
    for k, default in _DEFAULTS.items():
        if k in gc and gc[k] != default and k not in _BEAM_ONLY:
            why = "MindSpeed-MM's generate does not read it either" if k in _NOT_READ_BY_MM else \
                "not implemented here"
            s.notices.append(f"generation_config.{k} = {gc[k]!r} has no effect ({why})")
    return s


class ProcessedTokenChooser(TokenChooser):
    """TokenChooser with HF's logits processors applied first, per row, on the row's own tokens
    (prompt without padding + what was generated): repetition penalty, minimum length (stop ids
    masked), suppressed tokens. Used as `sampling=` of `generate`."""

    def __init__(self, settings: GenerationSettings, seed, prompts):
        super().__init__(settings.sampling(seed))
        self.s = settings
        self.seen = [list(map(int, p)) for p in prompts]
        self.prompt_lens = [len(p) for p in prompts]
        self.step = 0

    def _process(self, logits):
        s = self.s
        scores = np.array(logits, dtype=np.float32, copy=True)
        for b in range(scores.shape[0]):
            row = scores[b]
            if s.repetition_penalty != 1.0 and self.seen[b]:
                ids = np.unique(np.asarray(self.seen[b], dtype=np.int64))
                row[ids] = repetition_penalized(row[ids], s.repetition_penalty)
            cur = self.prompt_lens[b] + self.step
            if s.eos_token_id and ((s.min_length and cur < s.min_length) or
                                   (s.min_new_tokens and self.step < s.min_new_tokens)):
                row[s.eos_token_id] = -np.inf
            if s.suppress_tokens:
                row[s.suppress_tokens] = -np.inf
            if s.begin_suppress_tokens and self.step == 0:
                row[s.begin_suppress_tokens] = -np.inf
        return scores

    def __call__(self, logits):
        nxt = super().__call__(self._process(np.asarray(logits)))
        for b, t in enumerate(nxt.tolist()):
            self.seen[b].append(int(t))
        self.step += 1
        return nxt
