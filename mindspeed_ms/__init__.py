"""mindspeed-ms: a MindSpore-native Qwen2-VL fine-tuning framework compatible with MindSpeed-MM."""
__version__ = "0.1.0"

import os as _os

# transformers prints "None of PyTorch, TensorFlow >= 2.0, or Flax have been found ..." on import
# when torch is absent (our runtime never imports torch; it only uses transformers' tokenizers):
# an advisory banner, not a problem of the user's run. A user's own setting wins.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
