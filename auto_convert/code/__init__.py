"""PyTorch-API code -> MindSpore code (libcst rewrite driven by ``mapping.json``)."""
from auto_convert.code.mapping import Mapping, check_mapping, load_mapping
from auto_convert.code.rewriter import Unmapped, convert_source
from auto_convert.code.tree import TreeReport, convert_tree

__all__ = ["Mapping", "TreeReport", "Unmapped", "check_mapping", "convert_source", "convert_tree", "load_mapping"]
