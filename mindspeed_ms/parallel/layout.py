"""Where each layer lives in the pipeline: model.json `pipeline_num_layers` -> stages and chunks.

MindSpeed-MM places the vision encoder first and the text decoder after it along the pipeline.
`pipeline_num_layers` is one list of length pp, or, with a virtual pipeline (VPP), either one
list per chunk (`[[...pp...], [...pp...]]`, the mm-convert hf_to_mm form) or a flat list of
length pp*vpp (the mm_to_hf / resplit form). Chunk v of stage p is "position" v*pp + p: the data
flows through positions in that order, which is also the order of the `model{v}` state dicts.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence


class ParallelConfigError(ValueError):
    """An invalid parallel layout; the message names the offending numbers and the fix."""


@dataclass
class Placement:
    """What one (stage, chunk) holds. Layer ranges are global [start, end) indices; the
    checkpoint renumbers them locally from 0 on each rank."""
    stage: int
    chunk: int
    position: int                   # chunk * pp + stage: order along the data flow
    vit_layers: range
    llm_layers: range
    patch_embed: bool = False
    projector: bool = False
    embedding: bool = False
    final_layernorm: bool = False
    output_layer: bool = False

    def is_empty(self):
        return not (len(self.vit_layers) or len(self.llm_layers) or self.patch_embed or self.projector
                    or self.embedding or self.output_layer)


@dataclass
class PipelineLayout:
    pp: int
    vpp: int
    vit_chunks: List[List[int]]     # [vpp][pp]
    llm_chunks: List[List[int]]     # [vpp][pp]
    placements: List[Placement] = field(default_factory=list)   # in position order (v*pp + p)

    def stage_placements(self, stage: int) -> List[Placement]:
        return [pl for pl in self.placements if pl.stage == stage]

    def flat_vit(self) -> List[int]:
        return [n for chunk in self.vit_chunks for n in chunk]

    def flat_llm(self) -> List[int]:
        return [n for chunk in self.llm_chunks for n in chunk]


def normalize_pp_layers(value, pp: int, vpp: int, num_layers: int, name: str) -> List[List[int]]:
    """Return `pipeline_num_layers` as vpp lists of pp ints, checking lengths and the sum.

    `name` is the model.json key path used in messages (e.g. "text_decoder.pipeline_num_layers")."""
    if value is None:
        if pp * vpp == 1:
            return [[num_layers]]
        raise ParallelConfigError(
            f"{name} is missing in model.json but --pipeline-model-parallel-size {pp}"
            + (f" x --virtual-pipeline-model-parallel-size {vpp}" if vpp > 1 else "")
            + f" needs it: give {pp * vpp} layer counts summing to num_layers {num_layers}")
    if not isinstance(value, (list, tuple)) or not value:
        raise ParallelConfigError(f"{name} must be a list of layer counts, got {value!r}")
    nested = all(isinstance(v, (list, tuple)) for v in value)
    if nested:
        chunks = [list(v) for v in value]
        if len(chunks) != vpp:
            raise ParallelConfigError(
                f"{name} has {len(chunks)} virtual-pipeline chunks {value} but "
                f"--virtual-pipeline-model-parallel-size is {vpp}: give one list of {pp} per chunk")
        for v, chunk in enumerate(chunks):
            if len(chunk) != pp:
                raise ParallelConfigError(
                    f"{name} chunk {v} {chunk} has {len(chunk)} entries but "
                    f"--pipeline-model-parallel-size is {pp}: each chunk needs one count per stage")
    else:
        flat = list(value)
        if len(flat) != pp * vpp:
            want = f"pp {pp}" + (f" x vpp {vpp} = {pp * vpp}" if vpp > 1 else "")
            raise ParallelConfigError(
                f"{name} {flat} has {len(flat)} entries but the layout needs {want} "
                f"(--pipeline-model-parallel-size {pp}"
                + (f", --virtual-pipeline-model-parallel-size {vpp}" if vpp > 1 else "") + ")")
        chunks = [flat[v * pp:(v + 1) * pp] for v in range(vpp)]
    for chunk in chunks:
        for n in chunk:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ParallelConfigError(f"{name} {value} must hold non-negative integers, found {n!r}")
    total = sum(sum(c) for c in chunks)
    if total != num_layers:
        raise ParallelConfigError(
            f"{name} {value} places {total} layers but num_layers is {num_layers}: the counts must sum "
            f"to num_layers")
    return chunks


def build_pipeline_layout(vit_value, llm_value, pp: int, vpp: int, vit_num_layers: int,
                          llm_num_layers: int, vit_name="image_encoder.vision_encoder.pipeline_num_layers",
                          llm_name="text_decoder.pipeline_num_layers") -> PipelineLayout:
    """Validate the two `pipeline_num_layers` lists together and place every layer and module."""
    if pp < 1 or vpp < 1:
        raise ParallelConfigError(f"pipeline sizes must be >= 1, got pp {pp} vpp {vpp}")
    vit = normalize_pp_layers(vit_value, pp, vpp, vit_num_layers, vit_name)
    llm = normalize_pp_layers(llm_value, pp, vpp, llm_num_layers, llm_name)
    flat_vit = [n for c in vit for n in c]
    flat_llm = [n for c in llm for n in c]
    # The vision encoder must be complete before the text decoder starts: the LLM's first layer
    # consumes the merged image features.
    cum = 0
    for i, (nv, nl) in enumerate(zip(flat_vit, flat_llm)):
        cum += nv
        if nl > 0 and cum < vit_num_layers:
            where = _where(i, pp, vpp)
            raise ParallelConfigError(
                f"pipeline_num_layers: vision encoder {_show(vit, vpp)} with text decoder {_show(llm, vpp)} "
                f"places text-decoder layers on {where} while only {cum} of {vit_num_layers} vision "
                f"layers come before it; all vision layers must be placed before any text-decoder layer "
                f"(e.g. vision [{vit_num_layers}, 0, ...] with text [1, ...])")
    layout = PipelineLayout(pp=pp, vpp=vpp, vit_chunks=vit, llm_chunks=llm)
    first_vit = _first_nonzero(flat_vit)
    last_vit = _last_nonzero(flat_vit)
    first_llm = _first_nonzero(flat_llm)
    last_llm = _last_nonzero(flat_llm)
    vstart = lstart = 0
    for i in range(pp * vpp):
        v, p = divmod(i, pp)
        pl = Placement(stage=p, chunk=v, position=i,
                       vit_layers=range(vstart, vstart + flat_vit[i]),
                       llm_layers=range(lstart, lstart + flat_llm[i]),
                       patch_embed=(i == first_vit), projector=(i == last_vit),
                       embedding=(i == first_llm), final_layernorm=(i == last_llm),
                       output_layer=(i == last_llm))
        vstart += flat_vit[i]
        lstart += flat_llm[i]
        layout.placements.append(pl)
    for p in range(pp):
        if all(pl.is_empty() for pl in layout.stage_placements(p)):
            raise ParallelConfigError(
                f"pipeline_num_layers: vision {_show(vit, vpp)} / text {_show(llm, vpp)} leave pipeline "
                f"stage {p} without any layer; every stage must compute something (move layers onto it "
                f"or lower --pipeline-model-parallel-size)")
    return layout


def _first_nonzero(xs: Sequence[int]) -> Optional[int]:
    return next((i for i, n in enumerate(xs) if n > 0), None)


def _last_nonzero(xs: Sequence[int]) -> Optional[int]:
    idx = [i for i, n in enumerate(xs) if n > 0]
    return idx[-1] if idx else None


def _show(chunks, vpp):
    return str(chunks[0]) if vpp == 1 else str(chunks)


def _where(i, pp, vpp):
    v, p = divmod(i, pp)
    return f"stage {p}" + (f" chunk {v}" if vpp > 1 else "")
