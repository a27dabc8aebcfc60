"""Batches in the model input contract of docs/architecture.md (a dict of numpy arrays).

Graph mode compiles one step per input shape, so the sequence axis is padded to a small set of
length buckets (multiples of 8: 64, 96, 128, 192, 256, ... up to --seq-length) and the vision
patch axis to patch buckets (64, 96, 128, 192, ... patches; multiples of 16 so merge windows stay
whole). A batch without any image or video carries only padding patches (the "dummy image": 4
patches, one merged token, referenced by no token) so every rank runs the same graph. Padding never
changes results: padded tokens have attention_mask 0 and label -100, padded patches have their own
ViT segment and are gathered by no token.
"""
import numpy as np

from mindspeed_ms.data.packing import PACKING_KINDS
from mindspeed_ms.data.template import IGNORE_INDEX
from mindspeed_ms.models.qwen2vl.inputs import build_vision_inputs, offset_vision_inputs
from mindspeed_ms.models.qwen2vl.rope import get_rope_index
from mindspeed_ms.training.loss_weights import make_loss_weights

PAD_TOKEN_ID = 151643  # <|endoftext|>
DUMMY_PATCHES = 4  # one 28x28 image: 2x2 patches of 14, one merged token
PATCH_DIM = 3 * 2 * 14 * 14


def _round_up(n, m):
    return -(-n // m) * m


def length_buckets(max_len, start=64, multiple=8):
    """Sorted bucket sizes: start * {1, 1.5} * 2^k, multiples of `multiple`, the last = max_len rounded up."""
    top = _round_up(max_len, multiple)
    out, b = [], start
    while b < top:
        out += [_round_up(b, multiple)] + ([_round_up(b * 3 // 2, multiple)] if b * 3 // 2 < top else [])
        b *= 2
    return sorted(set(out + [top]))


def pick_bucket(n, buckets):
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]} (sequences must be cut to --seq-length)")


def patch_bucket(n, start=64, multiple=16):
    """Patch-axis size for n real patches: DUMMY_PATCHES when none, else start * {1, 1.5} * 2^k."""
    if n == 0:
        return DUMMY_PATCHES
    b = start
    while True:
        for c in (b, b * 3 // 2):
            if c >= n:
                return _round_up(c, multiple)
        b *= 2


class Qwen2VLCollator:
    """`collator(samples) -> batch` for SFT samples ({"input_ids", "labels", optional pixels})."""

    def __init__(self, seq_length, pad_token_id=PAD_TOKEN_ID, buckets=None, padding_side="right",
                 ignore_pad_token_for_loss=True, pad_to_multiple_of=8, merge_size=2, patch_dim=PATCH_DIM,
                 num_patches=None, vision_segments=None, dp_rank=None, batch_layout=None, packing=None):
        """`batch_layout`: the model family's host-side layout (`models.<family>.batch`, e.g.
        Qwen2.5-VL's window order and absolute-time positions); None = Qwen2-VL's with the released
        token ids. Ascend-path options (off by default, as on CPU):
        - `num_patches`: a fixed patch-axis size instead of the patch buckets;
        - `vision_segments`: also emit `vision_cu_seqlens` [vision_segments] for the flash ViT;
        - `dp_rank`: this rank's vision keys made global (`inputs.offset_vision_inputs`) for semi-auto
          parallel, where the patches of all dp ranks form one ViT sequence. Needs `num_patches` and
          one length bucket, so every rank's local tensors have the same shape.
        `packing` ("neat" / "cross", `data.packing`): each item is a list of samples, packed into
        one row (see `_pack_row`)."""
        if pad_to_multiple_of % 8:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of}: must be a multiple of 8")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side {padding_side!r}: use 'right' or 'left'")
        self.buckets = sorted(buckets) if buckets else length_buckets(seq_length, multiple=pad_to_multiple_of)
        if any(b % 8 for b in self.buckets):
            raise ValueError(f"length buckets {self.buckets} must all be multiples of 8")
        self.pad_token_id, self.padding_side, self.merge_size, self.patch_dim = pad_token_id, padding_side, merge_size, patch_dim
        self.label_pad = IGNORE_INDEX if ignore_pad_token_for_loss else pad_token_id
        if dp_rank is not None and (num_patches is None or len(self.buckets) != 1):
            raise ValueError(f"dp_rank={dp_rank}: the dp ranks' vision inputs form one global sequence only if "
                             f"every rank has the same shapes; give num_patches and a single length bucket "
                             f"(buckets=[seq_length]), got num_patches={num_patches}, buckets={self.buckets}")
        if num_patches is not None and num_patches % (merge_size ** 2):
            raise ValueError(f"num_patches={num_patches} must be a multiple of merge_size^2={merge_size ** 2}")
        self.num_patches, self.vision_segments, self.dp_rank = num_patches, vision_segments, dp_rank
        self.batch_layout = batch_layout
        if packing not in (None,) + PACKING_KINDS:
            raise ValueError(f"packing {packing!r}: use one of {PACKING_KINDS} or None")
        self.packing = packing

    def _pad(self, seqs, length, value):
        out = np.full((len(seqs), length), value, dtype=np.int32)
        for i, s in enumerate(seqs):
            if self.padding_side == "right":
                out[i, :len(s)] = s
            else:
                out[i, length - len(s):] = s
        return out

    def _pack_row(self, pack):
        """One row from a list of samples: ids and labels concatenated, `segments` 1..k per sample.
        The first label of every sample is dropped (-100): the position before it is the previous
        sample's last token, which must not learn to predict the next sample's start (unpacked,
        nothing predicts a sample's first token either)."""
        if not pack:
            raise ValueError("cannot pack an empty list of samples")
        labels = [np.asarray(s["labels"], np.int32).copy() for s in pack]
        for lab in labels:
            lab[:1] = IGNORE_INDEX
        segs = [np.full(len(s["input_ids"]), k + 1, np.int32) for k, s in enumerate(pack)]
        return (np.concatenate([np.asarray(s["input_ids"], np.int32) for s in pack]), np.concatenate(labels),
                np.concatenate(segs))

    def _packed_positions(self, packs, input_ids, segments):
        """M-RoPE positions of packed rows: per sample (restarting at 0) for neat packing, over the
        whole row as one sequence for cross packing; padding holds 1 as unpacked."""
        position_ids = np.ones((3,) + input_ids.shape, np.int32)
        for r, pack in enumerate(packs):
            where = np.flatnonzero(segments[r])
            if self.packing == "cross":
                pos = self._positions(input_ids[r:r + 1, where], pack)
                position_ids[:, r, where] = pos[:, 0]
                continue
            at = where[0] if len(where) else 0
            for s in pack:
                n = len(s["input_ids"])
                position_ids[:, r, at:at + n] = self._positions(np.asarray(s["input_ids"])[None], [s])[:, 0]
                at += n
        return position_ids

    def _positions(self, ids, samples):
        """M-RoPE positions [3, 1, n] of one sequence holding `samples`' vision inputs."""
        img, vid = _grids(samples, "image_grid_thw"), _grids(samples, "video_grid_thw")
        if self.batch_layout is None:
            return get_rope_index(ids, img, vid, None, self.merge_size)[0]
        seconds = None
        if self.batch_layout.uses_video_seconds and len(vid):
            seconds = np.concatenate([np.ones(len(s["video_grid_thw"])) if s.get("second_per_grid_ts") is None
                                      else np.asarray(s["second_per_grid_ts"], np.float64)
                                      for s in samples if s.get("video_grid_thw") is not None
                                      and len(s["video_grid_thw"])])
        return self.batch_layout.position_ids(ids, img, vid, None, seconds)[0]

    def __call__(self, samples):
        if not samples:
            raise ValueError("cannot collate an empty batch")
        packs = None
        if self.packing:
            packs, rows = samples, [self._pack_row(p) for p in samples]
            samples = [s for p in packs for s in p]       # vision inputs in row, then sample order
            seqs, label_seqs, seg_seqs = zip(*rows)
        else:
            seqs = [s["input_ids"] for s in samples]
            label_seqs = [s["labels"] for s in samples]
            seg_seqs = [np.ones(len(s), np.int32) for s in seqs]
        S = pick_bucket(max(len(s) for s in seqs), self.buckets)
        input_ids = self._pad(seqs, S, self.pad_token_id)
        labels = self._pad(label_seqs, S, self.label_pad)
        segments = self._pad(seg_seqs, S, 0)
        # neat packing: the sample number is the attention mask (LLaMA-Factory's convention), which
        # the text decoder turns into a block-diagonal causal mask; else 1 = real token
        attention_mask = segments if self.packing == "neat" else (segments > 0).astype(np.int32)

        def cat(key, width):
            parts = [s[key] for s in samples if s.get(key) is not None and len(s[key])]
            return np.concatenate(parts) if parts else np.zeros((0, width), np.float32 if width == self.patch_dim else np.int64)

        img_pv, img_grid = cat("pixel_values", self.patch_dim), cat("image_grid_thw", 3).astype(np.int64)
        vid_pv, vid_grid = cat("pixel_values_videos", self.patch_dim), cat("video_grid_thw", 3).astype(np.int64)
        real = img_pv.shape[0] + vid_pv.shape[0]
        N = patch_bucket(real) if self.num_patches is None else self.num_patches
        if real > N:
            raise ValueError(f"the batch has {real} image/video patches but the collator's num_patches is {N}: "
                             f"raise num_patches or lower the images' max_pixels")
        pixel_values = np.zeros((N, self.patch_dim), dtype=np.float32)
        pixel_values[:img_pv.shape[0]] = img_pv
        pixel_values[img_pv.shape[0]:real] = vid_pv
        if self.batch_layout is not None:
            vis = self.batch_layout.vision_inputs(input_ids, pixel_values, img_grid, vid_grid, N, self.vision_segments)
            pixel_values = vis.pop("pixel_values")
            seconds = None
            if self.batch_layout.uses_video_seconds and len(vid_grid):
                # seconds per temporal patch of each video, in batch order (Qwen2.5-VL's absolute time;
                # a sample without them counts 1.0 per video, HF's default)
                seconds = np.concatenate([np.ones(len(s["video_grid_thw"])) if s.get("second_per_grid_ts") is None
                                          else np.asarray(s["second_per_grid_ts"], np.float64)
                                          for s in samples if s.get("video_grid_thw") is not None and len(s["video_grid_thw"])])
            position_ids = None if packs is not None else \
                self.batch_layout.position_ids(input_ids, img_grid, vid_grid, attention_mask, seconds)[0]
        else:
            vis = build_vision_inputs(input_ids, img_grid, vid_grid, num_patches=N, spatial_merge_size=self.merge_size,
                                      num_segments=self.vision_segments)
            position_ids = None if packs is not None else \
                get_rope_index(input_ids, img_grid, vid_grid, attention_mask, self.merge_size)[0]
        if self.dp_rank is not None:
            vis = offset_vision_inputs(vis, self.dp_rank, self.merge_size)
        if packs is not None:
            position_ids = self._packed_positions(packs, input_ids, segments)
        out = {
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": position_ids.astype(np.int32), "pixel_values": pixel_values, **vis,
            "loss_weights": default_loss_weights(labels, segments if packs is not None else None),
            "image_grid_thw": img_grid, "video_grid_thw": vid_grid,
        }
        if packs is not None:
            # host only: which sample each position belongs to (the per-sample loss mode needs it)
            out["packed_segments"] = segments
        return out


def _grids(samples, key):
    parts = [np.asarray(s[key]).reshape(-1, 3) for s in samples if s.get(key) is not None and len(s[key])]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), np.int64)


def default_loss_weights(labels, segments=None):
    """Token mean over the micro-batch (HF semantics); training rescales for its loss modes."""
    return make_loss_weights(labels, "default", num_micro_batches=1, dp_size=1, segments=segments)


def loss_weights_for_mode(labels, mode, num_micro_batches=1, dp_size=1, global_batch_size=None,
                          global_valid_tokens=None, segments=None):
    """`loss_weights` for the three loss modes ("default", "per_sample", "per_token"); see
    `mindspeed_ms.training.loss_weights.make_loss_weights`, which this delegates to."""
    return make_loss_weights(labels, mode, num_micro_batches, dp_size, global_batch_size, global_valid_tokens,
                             segments)


class Qwen2VLDPOCollator(Qwen2VLCollator):
    """Pairwise batch of 2n rows: the n chosen sequences, then the n rejected ones (each row carries
    its sample's images, so the vision features follow the rows' order)."""

    def __call__(self, samples):
        rows = []
        for kind in ("chosen", "rejected"):
            for s in samples:
                row = {k: v for k, v in s.items() if not k.startswith(("chosen_", "rejected_"))}
                row.update(input_ids=s[f"{kind}_input_ids"], labels=s[f"{kind}_labels"])
                rows.append(row)
        return super().__call__(rows)


def build_collator(cfg, seq_length, **kwargs):
    """The collator named by `dataloader_param.collate_param.model_name` of a DataConfig (packing
    from data.json for SFT: `data.packing.packing_kind`; preference data is never packed)."""
    from mindspeed_ms.data.packing import packing_kind
    cp = cfg.dataloader_param.collate_param
    cls = Qwen2VLDPOCollator if cp.model_name == "qwen2vl_dpo" else Qwen2VLCollator
    if cls is Qwen2VLCollator and not cfg.attr.ranking:
        kwargs.setdefault("packing", packing_kind(cfg))
    return cls(seq_length, ignore_pad_token_for_loss=cp.ignore_pad_token_for_loss,
               pad_to_multiple_of=cp.pad_to_multiple_of, **kwargs)
