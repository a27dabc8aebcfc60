"""MindSpore context for generation: PYNATIVE (the KV cache grows every step) and synchronous.

Decoding runs many tiny ops; on a small, busy CPU machine MindSpore's asynchronous PYNATIVE op
pipeline was measured ~15x slower for them than synchronous execution (34 tokens of the tiny
model: 32 s vs 1.6 s on 2 shared cores). The setting only takes effect before the first op runs,
so command-line tools call `setup_inference_context()` first thing.
"""


def setup_inference_context(device=None):
    import mindspore as ms

    from mindspeed_ms.training.backend import detect_backend

    ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)
    ms.set_device(device or detect_backend())
