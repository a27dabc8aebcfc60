"""mindspeed-ms: a MindSpore-native Qwen2-VL fine-tuning framework compatible with MindSpeed-MM."""
__version__ = "0.1.0"
