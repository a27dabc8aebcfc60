"""Building blocks with their primitives exposed as attributes (for sharding from outside)."""
from mindspeed_ms.models.layers.activation import ExactGELU, QuickGELU, SiLU, get_activation
from mindspeed_ms.models.layers.attention import MASK_VALUE, CoreAttention
from mindspeed_ms.models.layers.embedding import Embedding
from mindspeed_ms.models.layers.linear import Linear
from mindspeed_ms.models.layers.norm import LayerNorm, RMSNorm

__all__ = ["Linear", "LayerNorm", "RMSNorm", "Embedding", "CoreAttention", "MASK_VALUE",
           "QuickGELU", "ExactGELU", "SiLU", "get_activation"]
