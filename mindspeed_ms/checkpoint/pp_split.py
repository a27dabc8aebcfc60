"""Pipeline (PP) and virtual-pipeline (VPP) placement of MM tensors.

A layout is `tp` plus per-chunk layer counts for the ViT and the LLM, `[vpp][pp]` (hf_to_mm's nested
lists; a flat list is one chunk row). Chunks run in the order `v * pp + p` (chunk v of stage p), which
is also the index of the state dict `model{v}` in stage p's file. Each chunk gets its cumulative range
of layers renumbered from 0 (ViT and LLM independently); the first chunk holding ViT layers gets
`patch_embed`, the last one the projector; the first chunk holding LLM layers gets the embedding,
the last one the final norm and the output layer.
"""
import re
from dataclasses import dataclass
from itertools import accumulate

from .names import ConversionError, Dims

VIT_LAYERS = "image_encoder.encoder.blocks.layers."
LLM_LAYERS = "text_decoder.decoder.layers."
_VIT_FIRST = ("image_encoder.encoder.patch_embed.",)
_VIT_LAST = ("image_encoder.projector.",)
_LLM_FIRST = ("text_decoder.embedding.",)
_LLM_LAST = ("text_decoder.decoder.final_layernorm.", "text_decoder.output_layer.")


class LayoutError(ValueError):
    """A parallel layout that does not fit the model (the message names the numbers)."""


def _as_nested(layers, flag):
    if not isinstance(layers, (list, tuple)) or not layers:
        raise LayoutError(f"{flag} must be a non-empty list of layer counts, got {layers!r}")
    nested = [list(x) for x in layers] if all(isinstance(x, (list, tuple)) for x in layers) else None
    if nested is None:
        if any(isinstance(x, (list, tuple)) for x in layers):
            raise LayoutError(f"{flag} mixes numbers and lists: {layers!r}")
        nested = [list(layers)]
    for row in nested:
        if not row:
            raise LayoutError(f"{flag} has an empty chunk list: {layers!r}")
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise LayoutError(f"{flag} must hold non-negative integers, got {x!r} in {layers!r}")
    if len({len(r) for r in nested}) != 1:
        raise LayoutError(f"{flag}: every virtual-pipeline chunk list needs the same number of stages, "
                          f"got lengths {[len(r) for r in nested]}")
    return tuple(tuple(r) for r in nested)


@dataclass(frozen=True)
class ParallelLayout:
    tp: int
    vit_layers: tuple  # [vpp][pp]
    llm_layers: tuple  # [vpp][pp]

    @classmethod
    def build(cls, tp_size=1, llm_pp_layers=None, vit_pp_layers=None) -> "ParallelLayout":
        if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
            raise LayoutError(f"tp_size must be a positive integer, got {tp_size!r}")
        llm = _as_nested(llm_pp_layers, "llm_pp_layers")
        vit = _as_nested(vit_pp_layers, "vit_pp_layers")
        if (len(llm), len(llm[0])) != (len(vit), len(vit[0])):
            raise LayoutError(f"llm_pp_layers is {len(llm)} chunk(s) x {len(llm[0])} stage(s) but vit_pp_layers "
                              f"is {len(vit)} x {len(vit[0])}: they must have the same shape")
        return cls(tp=tp_size, vit_layers=vit, llm_layers=llm)

    @property
    def pp(self):
        return len(self.llm_layers[0])

    @property
    def vpp(self):
        return len(self.llm_layers)

    @property
    def n_chunks(self):
        return self.pp * self.vpp

    def chunk_index(self, vpp_rank, pp_rank):
        return vpp_rank * self.pp + pp_rank

    def stage_chunks(self, pp_rank):
        """Chunk indices held by stage `pp_rank`, in `model0, model1, ...` order."""
        return [self.chunk_index(v, pp_rank) for v in range(self.vpp)]

    @property
    def flat_vit(self):
        return [x for row in self.vit_layers for x in row]

    @property
    def flat_llm(self):
        return [x for row in self.llm_layers for x in row]

    def as_lists(self):
        return {"tp_size": self.tp, "llm_pp_layers": [list(r) for r in self.llm_layers],
                "vit_pp_layers": [list(r) for r in self.vit_layers]}

    def validate(self, dims: Dims):
        """The reference checks, with messages that name the numbers."""
        if dims.kv_heads % self.tp:
            raise LayoutError(f"tp_size {self.tp} does not divide num_key_value_heads {dims.kv_heads} "
                              f"(tp_size may not exceed it and must divide it)")
        for what, n in (("num_attention_heads", dims.heads), ("vision_config.num_heads", dims.vit_heads),
                        ("intermediate_size", dims.ffn), ("vocab_size", dims.vocab)):
            if n % self.tp:
                raise LayoutError(f"tp_size {self.tp} does not divide {what} {n}")
        if sum(self.flat_vit) != dims.vit_layers:
            raise LayoutError(f"vit_pp_layers {self._show(self.vit_layers)} sum to {sum(self.flat_vit)} but "
                              f"vision_config.depth is {dims.vit_layers}")
        if sum(self.flat_llm) != dims.llm_layers:
            raise LayoutError(f"llm_pp_layers {self._show(self.llm_layers)} sum to {sum(self.flat_llm)} but "
                              f"num_hidden_layers is {dims.llm_layers}")
        self.check_order()

    def check_order(self):
        vit, llm = _nonzero(self.flat_vit), _nonzero(self.flat_llm)
        if vit and llm and vit[-1] > llm[0]:
            raise LayoutError(f"all ViT layers must be placed before any LLM layer: ViT layers reach chunk "
                              f"{vit[-1]} but LLM layers start in chunk {llm[0]} "
                              f"(vit {self._show(self.vit_layers)}, llm {self._show(self.llm_layers)})")

    def same_model(self, other: "ParallelLayout"):
        if sum(self.flat_vit) != sum(other.flat_vit) or sum(self.flat_llm) != sum(other.flat_llm):
            raise LayoutError(f"resplit must keep the layer totals: source has {sum(self.flat_vit)} ViT / "
                              f"{sum(self.flat_llm)} LLM layers, target {sum(other.flat_vit)} / {sum(other.flat_llm)}")

    @staticmethod
    def _show(rows):
        return [list(r) for r in rows] if len(rows) > 1 else list(rows[0])

    # ---- placement -------------------------------------------------------------------------------
    def _ranges(self, flat):
        ends = list(accumulate(flat))
        starts = [0] + ends[:-1]
        nz = _nonzero(flat)
        first, last = (nz[0], nz[-1]) if nz else (0, len(flat) - 1)
        return starts, ends, first, last

    def place(self, name: str):
        """(chunk index, local name) of global MM tensor `name`."""
        for prefix, flat, firsts, lasts in ((VIT_LAYERS, self.flat_vit, _VIT_FIRST, _VIT_LAST),
                                            (LLM_LAYERS, self.flat_llm, _LLM_FIRST, _LLM_LAST)):
            starts, ends, first, last = self._ranges(flat)
            if name.startswith(prefix):
                m = re.match(r"(\d+)\.(.*)", name[len(prefix):])
                layer = int(m.group(1))
                for c, (s, e) in enumerate(zip(starts, ends)):
                    if s <= layer < e:
                        return c, f"{prefix}{layer - s}.{m.group(2)}"
                raise LayoutError(f"{name}: layer {layer} is beyond the {ends[-1]} layers of the layout")
            if name.startswith(firsts):
                return first, name
            if name.startswith(lasts):
                return last, name
        raise ConversionError(f"{name} is not a Qwen2-VL MM tensor name (cannot place it in a pipeline stage)")

    def globalize(self, chunk: int, local_name: str) -> str:
        """Inverse of `place` for a tensor found in chunk `chunk`."""
        for prefix, flat in ((VIT_LAYERS, self.flat_vit), (LLM_LAYERS, self.flat_llm)):
            if local_name.startswith(prefix):
                starts, ends, _, _ = self._ranges(flat)
                m = re.match(r"(\d+)\.(.*)", local_name[len(prefix):])
                local = int(m.group(1))
                if local >= flat[chunk]:
                    raise LayoutError(f"chunk {chunk} holds {local_name}, but the layout gives it only "
                                      f"{flat[chunk]} layers")
                return f"{prefix}{starts[chunk] + local}.{m.group(2)}"
        return local_name


def _nonzero(flat):
    return [i for i, x in enumerate(flat) if x > 0]
