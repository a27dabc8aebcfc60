"""Qwen2.5-VL checkpoint names (MindSpeed-MM's `Qwen2_5_VLConverter`): the Qwen2-VL table with the
ViT MLP replaced by its gated form, and the TP rules with that MLP's fc1 split like a GLU.

* ViT `mlp.linear_fc1.{weight,bias}` = concat(gate_proj, up_proj) on dim 0; `mlp.linear_fc2` = down_proj;
* ViT norms (`norm1`/`norm2`) and the merger's `ln_q` are RMSNorms: weights only, same names;
* TP: ViT `linear_fc1` weight and bias glu (rank r holds concat(gate[r], up[r])), the rest as Qwen2-VL;
* config.json's vision_config gives the ViT width as `hidden_size` (Qwen2-VL: `embed_dim`).
"""
from .names import _TABLE, _V, GLU, RENAME, CheckpointScheme
from .tp_split import GLU as TP_GLU
from .tp_split import QWEN2VL_TP_RULES

_VIT_MLP = {_V + "mlp.linear_fc1.{p}", _V + "mlp.linear_fc2.{p}"}
QWEN2_5VL_TABLE = tuple(row for row in _TABLE if row[0] not in _VIT_MLP) + (
    (_V + "mlp.linear_fc1.{p}", ("visual.blocks.{i}.mlp.gate_proj.{p}", "visual.blocks.{i}.mlp.up_proj.{p}"), GLU),
    (_V + "mlp.linear_fc2.{p}", ("visual.blocks.{i}.mlp.down_proj.{p}",), RENAME),
)
_VIT_FC1 = r"image_encoder\.encoder\.blocks\.layers\.\d+\.mlp\.linear_fc1\.(weight|bias)"
QWEN2_5VL_TP_RULES = tuple((p, TP_GLU) if p == _VIT_FC1 else (p, k) for p, k in QWEN2VL_TP_RULES)
assert any(p == _VIT_FC1 for p, _ in QWEN2VL_TP_RULES)

QWEN2_5VL_SCHEME = CheckpointScheme("qwen2_5vl", QWEN2_5VL_TABLE, QWEN2_5VL_TP_RULES, vit_dim_key="hidden_size")
