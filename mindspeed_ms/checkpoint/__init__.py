"""Qwen2-VL checkpoints: HF <-> MindSpeed-MM names and fusions, TP/PP/VPP rank files, mm-convert.

Entry points for other packages (numpy in, numpy out; no torch):
  load_hf_state_dict(hf_dir), load_hf_config(hf_dir)            -- hf_io
  hf_to_mm_state_dict(hf_sd, cfg), mm_to_hf_state_dict(mm_sd, cfg) -- names (tp1, pp1)
  ParallelLayout.build(tp_size, llm_pp_layers, vit_pp_layers)    -- pp_split
  split_for_rank, rank_shapes, write_mm_checkpoint, read_mm_checkpoint, MMCheckpointReader -- mm_io
  latest_tag(root)                                               -- layout
  hf_to_mm, mm_to_hf, resplit                                    -- converter (what mm-convert runs)
"""
from .converter import hf_to_mm, mm_to_hf, resplit
from .hf_io import CheckpointError, HFCheckpoint, load_hf_config, load_hf_state_dict
from .layout import latest_tag
from .mm_io import MMCheckpointReader, rank_shapes, read_mm_checkpoint, split_for_rank, write_mm_checkpoint
from .names import ConversionError, hf_to_mm_state_dict, mm_to_hf_state_dict
from .pp_split import LayoutError, ParallelLayout
