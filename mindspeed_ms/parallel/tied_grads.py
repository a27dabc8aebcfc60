"""Tied embeddings split over pipeline stages: the embedding table (first stage) and the output
layer's copy of it (last stage, `TextDecoder.add_output_layer_copy`) are one weight in the math.
Megatron all-reduces their gradients over the embedding group so both copies take the same update;
`TiedGradSum` is that sum, applied to the gradient tuple before the optimizer. The sum of the two
gradients is exactly the gradient of the shared table of a pp 1 model (tested on CPU).
"""
from typing import List, Sequence, Tuple

from mindspore import nn

from mindspeed_ms.config.param_shapes import TEXT_PREFIX

EMBED = f"{TEXT_PREFIX}.embedding.word_embeddings.weight"
OUTPUT = f"{TEXT_PREFIX}.output_layer.weight"


def tied_pairs(params: Sequence, tied: bool) -> List[Tuple[int, int]]:
    """[(index of the embedding table, index of the output-layer copy)] among `params` (Parameters
    or names) for a tied model holding a copy; [] otherwise (untied, or pp 1 without a copy)."""
    if not tied:
        return []
    names = [getattr(p, "name", p) for p in params]
    if EMBED in names and OUTPUT in names:
        return [(names.index(EMBED), names.index(OUTPUT))]
    return []


class TiedGradSum(nn.Cell):
    """grads -> grads with each tied pair replaced by their sum (a no-op without pairs)."""

    def __init__(self, pairs: Sequence[Tuple[int, int]]):
        super().__init__()
        self.pairs = tuple(tuple(p) for p in pairs)

    def construct(self, grads):
        if not self.pairs:
            return grads
        out = list(grads)
        for i, j in self.pairs:
            total = out[i] + out[j]
            out[i] = total
            out[j] = total
        return tuple(out)
