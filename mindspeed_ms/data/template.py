"""The `qwen2vl` chat template: messages -> input_ids and labels (MindSpeed-MM semantics).

Slots (as MindSpeed-MM's `qwen2vl` template):
  system       `<|im_start|>system\\n{content}<|im_end|>\\n` (default "You are a helpful assistant.")
  user         `<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n`
  assistant    `{content}<|im_end|>\\n`
  observation  `<|im_start|>tool\\n{content}<|im_end|>\\n<|im_start|>assistant\\n`
  function     `{content}` (MindSpeed-MM's qwen2vl template sets no function slot, so its default
               applies: the content alone, no `<|im_end|>\\n`)
`<image>` / `<video>` become `<|vision_start|>` + n x `<|image_pad|>` / `<|video_pad|>` +
`<|vision_end|>` with n = t*h*w / merge^2 of the item's grid.

Labels: prompt tokens (system, user turn, `<|im_start|>assistant\\n`) are -100, responses (with
`<|im_end|>\\n`) are kept; `train_on_prompt` keeps the prompt too; `mask_history` trains the last
turn only and, when truncating, keeps the last turns first.

Truncation to `cutoff_len` (= --seq-length) is MindSpeed-MM's: turn by turn (last turns first with
`mask_history`) each prompt/response pair gets `infer_seqlen(len(prompt), len(response), cutoff_len
- tokens so far)` and keeps the head of each side; once the budget is spent the remaining turns are
dropped. One departure: where that cut would drop image/video tokens (it falls inside or before a
vision block), the sample would carry fewer vision tokens than its pixels give features (MindSpeed-MM's
model then fails assigning the features to the tokens), so instead the vision tokens are reserved first and the same
turn-by-turn budget is spent on the text tokens only (`_cut_keeping_vision`). A sample whose vision
tokens alone exceed `cutoff_len` cannot be trained and raises `SkipSample` (the dataset counts and
reports these).
"""
IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
DEFAULT_SYSTEM = "You are a helpful assistant."

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"

SLOTS = {
    "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    "assistant": "{content}<|im_end|>\n",
    "observation": "<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n",
    "function": "{content}",
}
PROMPT_ROLES = ("user", "observation")
RESPONSE_ROLES = ("assistant", "function")


class SkipSample(Exception):
    """The sample cannot be used and MindSpeed-MM drops such samples: skip it and count it."""


def infer_seqlen(source_len, target_len, cutoff_len):
    """MindSpeed-MM / LLaMA-Factory budget split between a prompt and its response."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def expand_vision_placeholders(messages, image_tokens, video_tokens):
    """Replace each `<image>` / `<video>` by its token block; the counts must match the media.

    `image_tokens` / `video_tokens`: merged-token count of each image / video in order.
    Raises ValueError (with the counts) when tags and media disagree.
    """
    n_img = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    n_vid = sum(m["content"].count(VIDEO_PLACEHOLDER) for m in messages)
    if n_img != len(image_tokens):
        raise ValueError(f"{n_img} {IMAGE_PLACEHOLDER} tag(s) in the messages but {len(image_tokens)} image(s)")
    if n_vid != len(video_tokens):
        raise ValueError(f"{n_vid} {VIDEO_PLACEHOLDER} tag(s) in the messages but {len(video_tokens)} video(s)")
    it, vt = iter(image_tokens), iter(video_tokens)
    out = []
    for m in messages:
        parts = m["content"].split(IMAGE_PLACEHOLDER)
        content = parts[0] + "".join(VISION_START + IMAGE_PAD * next(it) + VISION_END + p for p in parts[1:])
        parts = content.split(VIDEO_PLACEHOLDER)
        content = parts[0] + "".join(VISION_START + VIDEO_PAD * next(vt) + VISION_END + p for p in parts[1:])
        out.append({"role": m["role"], "content": content})
    return out


class Qwen2VLTemplate:
    """Encodes aligned conversations ({"role", "content"} lists) with a Qwen2 tokenizer."""

    def __init__(self, tokenizer, default_system=DEFAULT_SYSTEM):
        self.tokenizer = tokenizer
        self.default_system = default_system
        ids = tokenizer.convert_tokens_to_ids([VISION_START, VISION_END, "<|im_end|>"])
        self.vision_start_id, self.vision_end_id, self.eos_id = ids

    def _encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_pairs(self, messages, system=None):
        """[(prompt_ids, response_ids)] per turn; the system block is part of the first prompt.
        Each slot is tokenized on its own (special tokens separate them, so this equals tokenizing
        the whole rendered string)."""
        if len(messages) % 2:
            raise ValueError(f"a conversation needs prompt/response pairs, got {len(messages)} messages")
        system = system or self.default_system
        pairs = []
        for i in range(0, len(messages), 2):
            p, r = messages[i], messages[i + 1]
            if p["role"] not in PROMPT_ROLES or r["role"] not in RESPONSE_ROLES:
                raise ValueError(f"turn {i // 2}: roles ({p['role']}, {r['role']}) are not (user|observation, "
                                 f"assistant|function)")
            prefix = SLOTS["system"].format(content=system) if i == 0 else ""
            pairs.append((self._encode(prefix) + self._encode(SLOTS[p["role"]].format(content=p["content"])),
                          self._encode(SLOTS[r["role"]].format(content=r["content"]))))
        return pairs

    def _vision_flags(self, ids):
        flags, inside = [], False
        for t in ids:
            if t == self.vision_start_id:
                inside = True
            flags.append(inside)
            if t == self.vision_end_id:
                inside = False
        return flags

    def _keep_text(self, ids, n_text):
        """All vision-block tokens of `ids` and its first `n_text` text tokens, in order."""
        out, seen = [], 0
        for t, is_vision in zip(ids, self._vision_flags(ids)):
            if is_vision:
                out.append(t)
            elif seen < n_text:
                out.append(t)
                seen += 1
        return out

    def _split_counts(self, ids):
        v = sum(self._vision_flags(ids))
        return v, len(ids) - v

    def _check_vision_fits(self, pairs, cutoff_len):
        vision = sum(self._split_counts(s)[0] + self._split_counts(t)[0] for s, t in pairs)
        if vision > cutoff_len:
            raise SkipSample(f"its image/video tokens alone ({vision}) exceed the sequence length {cutoff_len}")
        return vision

    def _vision_count(self, ids):
        return sum(self._vision_flags(ids))

    @staticmethod
    def _mindspeed_cut(pairs, cutoff_len, mask_history):
        """MindSpeed-MM's truncation: [(turn, prompt_ids, response_ids)] in processing order."""
        order = list(enumerate(pairs))
        if mask_history:
            order = order[::-1]  # the last turns have priority
        kept, total = [], 0
        for turn, (src, tgt) in order:
            if total >= cutoff_len:
                break
            ns, nt = infer_seqlen(len(src), len(tgt), cutoff_len - total)
            kept.append((turn, src[:ns], tgt[:nt]))
            total += ns + nt
        return kept

    def _cut_keeping_vision(self, pairs, cutoff_len, mask_history):
        """Our truncation where MindSpeed-MM's would drop vision tokens: they are reserved first and
        the same turn-by-turn `infer_seqlen` budget is spent on the text tokens only."""
        vision_left = self._check_vision_fits(pairs, cutoff_len)
        order = list(enumerate(pairs))
        if mask_history:
            order = order[::-1]
        kept, total = [], 0
        for turn, (src, tgt) in order:
            sv, st = self._split_counts(src)
            tv, tt = self._split_counts(tgt)
            vision_left -= sv + tv
            budget = cutoff_len - total - vision_left - sv - tv
            ns, nt = infer_seqlen(st, tt, budget) if budget > 0 else (0, 0)
            src, tgt = self._keep_text(src, ns), self._keep_text(tgt, nt)
            if src or tgt:
                kept.append((turn, src, tgt))
                total += len(src) + len(tgt)
        return kept

    def encode_supervised(self, messages, system=None, cutoff_len=None, train_on_prompt=False, mask_history=False):
        """input_ids and labels for an SFT sample (messages already expanded)."""
        pairs = self.encode_pairs(messages, system)
        cutoff_len = cutoff_len or 10 ** 12
        kept = self._mindspeed_cut(pairs, cutoff_len, mask_history)
        vision = sum(self._vision_count(s) + self._vision_count(t) for s, t in pairs)
        if sum(self._vision_count(s) + self._vision_count(t) for _, s, t in kept) != vision:
            kept = self._cut_keeping_vision(pairs, cutoff_len, mask_history)
        last = len(pairs) - 1
        input_ids, labels = [], []
        for turn, src, tgt in kept:
            src_label = list(src) if train_on_prompt else [IGNORE_INDEX] * len(src)
            tgt_label = [IGNORE_INDEX] * len(tgt) if (mask_history and turn != last) else list(tgt)
            if mask_history:  # turns were taken last first
                input_ids = src + tgt + input_ids
                labels = src_label + tgt_label + labels
            else:
                input_ids += src + tgt
                labels += src_label + tgt_label
        return input_ids, labels

    def encode_pairwise(self, prompt, chosen, rejected, system=None, cutoff_len=None):
        """(chosen_ids, chosen_labels, rejected_ids, rejected_labels) for a DPO sample: the prompt is
        shared, the responses are cut to one common budget: MindSpeed-MM's `infer_seqlen` on the whole
        prompt and the longer response, with the vision exception of `encode_supervised`."""
        cutoff_len = cutoff_len or 10 ** 12
        c_pairs = self.encode_pairs(prompt + [chosen], system)
        r_pairs = self.encode_pairs(prompt + [rejected], system)
        prompt_ids = [t for s, tg in c_pairs[:-1] for t in s + tg] + c_pairs[-1][0]
        chosen_ids, rejected_ids = c_pairs[-1][1], r_pairs[-1][1]
        pv, pt = self._split_counts(prompt_ids)
        if self._split_counts(chosen_ids)[0] or self._split_counts(rejected_ids)[0]:
            raise ValueError("chosen/rejected responses must not contain <image>/<video>: put media in the prompt")
        longest = max(len(chosen_ids), len(rejected_ids))
        ns, nt = infer_seqlen(len(prompt_ids), longest, cutoff_len)  # MindSpeed-MM's cut
        if self._vision_count(prompt_ids[:ns]) == pv:
            prompt_ids = prompt_ids[:ns]
        else:  # it would drop vision tokens: reserve them and cut the text (as `_cut_keeping_vision`)
            if pv > cutoff_len:
                raise SkipSample(f"its image/video tokens alone ({pv}) exceed the sequence length {cutoff_len}")
            ns, nt = infer_seqlen(pt, longest, cutoff_len - pv)
            prompt_ids = self._keep_text(prompt_ids, ns)
        chosen_ids, rejected_ids = chosen_ids[:nt], rejected_ids[:nt]
        ignore = [IGNORE_INDEX] * len(prompt_ids)
        return (prompt_ids + chosen_ids, ignore + chosen_ids, prompt_ids + rejected_ids, ignore + rejected_ids)


def get_template(name, tokenizer):
    if name not in ("qwen2vl", "qwen2_vl"):
        raise ValueError(f"unknown template {name!r}: this framework provides 'qwen2vl'")
    return Qwen2VLTemplate(tokenizer)
