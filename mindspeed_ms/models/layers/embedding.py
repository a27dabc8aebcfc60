"""Token embedding as a Gather primitive attribute (vocab-parallel sharding is set on `gather`)."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer


class Embedding(nn.Cell):
    def __init__(self, vocab_size, dim, init_std=0.02, dtype=ms.float32):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = Parameter(initializer(Normal(init_std), (vocab_size, dim), dtype), name="weight")
        self.gather = ops.Gather()

    def construct(self, ids):
        return self.gather(self.weight, ids, 0)
