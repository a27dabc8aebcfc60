"""Output layer + weighted cross entropy over token chunks, its gradient computed in the forward pass.

`loss = sum_t w_t * (logsumexp(h_t W^T) - (h_t W^T)[y_t])` for hidden rows h [T, H], the output
weight W [V, H] (tied embedding or output layer), targets y [T] and weights w [T] (0 = no loss).

Why: with the real 151,936-token vocabulary the [T x V] fp32 logits dominate a training step.
The plain path (matmul, LogSoftmax, GatherD, autodiff) keeps the logits, the log-probabilities and
their gradients whole ([T x V] each, ~0.6 GB per 1k tokens), and MindSpore's CPU LogSoftmaxGrad
kernel alone took ~40% of a tiny-model step. Here the rows are split into `num_chunks` chunks; each
chunk's logits live only while that chunk is processed, and the gradient is written directly:

    dlogits = w * (softmax(z) - onehot(y))
    dh = dlogits @ W          dW = dlogits^T @ h

The softmax comes from the fused Softmax kernel (one pass over the chunk; a broadcast subtract of
the row maximum alone cost more than the kernel), the log-sum-exp from the same probabilities
(z_max - log p[argmax], exact and never underflowing), and the one-hot is subtracted inside the
chunk. The forward pass therefore returns
(loss, dloss/dh, dloss/dW, per-token loss); `bprop` only scales them by the incoming gradient
(Liger-Kernel's fused linear cross entropy, written with MindSpore CPU primitives).

Inputs must have T divisible by `num_chunks`: the training batch is padded to a multiple of 8
tokens per sample (docs/architecture.md), so 1, 2, 4 or 8 chunks always fit.
"""
import mindspore as ms
from mindspore import nn, ops


class LinearCrossEntropy(nn.Cell):
    def __init__(self, num_chunks=4):
        super().__init__()
        if num_chunks not in (1, 2, 4, 8):
            raise ValueError(f"num_chunks must be 1, 2, 4 or 8 (a divisor of the 8-token padding), got {num_chunks}")
        self.num_chunks = num_chunks
        self.logits_matmul = ops.MatMul(transpose_b=True)       # h @ W^T
        self.grad_hidden_matmul = ops.MatMul()                  # e @ W
        self.grad_weight_matmul = ops.MatMul(transpose_a=True)  # e^T @ (coef * h)
        # ArgMaxWithValue: the row maximum; measured ~10x faster than ReduceMax on CPU for [512 x 151936]
        self.row_max = ops.ArgMaxWithValue(axis=-1, keep_dims=True)
        self.softmax = ops.Softmax(axis=-1)
        self.gather_d = ops.GatherD()
        self.scatter_add = ops.tensor_scatter_elements
        self.cast = ops.Cast()

    def _chunk(self, x, weight, t, w):
        """One chunk: (summed loss, per-token loss [m], dlogits @ W [m, H], dlogits^T @ h [V, H])."""
        logits = self.logits_matmul(x, weight)
        arg_max, z_max = self.row_max(logits)
        # the fused Softmax kernel: one pass instead of broadcast Sub + Exp + ReduceSum + Div, each a
        # full [m x V] sweep (the broadcast Sub alone was ~15% of a small-config step on CPU)
        p = self.softmax(logits)
        t_col = ops.reshape(t, (-1, 1))
        # logsumexp(z) = z_max - log p[argmax]: p at the argmax is >= 1/V, so this never underflows
        lse = z_max - ops.log(self.gather_d(p, 1, arg_max))
        nll = ops.reshape(lse - self.gather_d(logits, 1, t_col), (-1,))
        # dlogits / w = softmax - onehot, the one-hot subtracted in the chunk ([m x V]) rather than as
        # a gather and a segment sum over the [V x H] gradient (two more vocabulary-sized buffers)
        d = self.scatter_add(p, t_col, ops.full(t_col.shape, -1.0, dtype=ms.float32), 1, "add")
        coef = ops.reshape(w, (-1, 1))
        grad_h = coef * self.grad_hidden_matmul(d, weight)
        grad_w = self.grad_weight_matmul(d, coef * x)
        return (nll * w).sum(), nll, grad_h, grad_w

    def construct(self, hidden, weight, targets, token_weights):
        """hidden [T, H]; weight [V, H]; targets [T] int32 (any index where the weight is 0);
        token_weights [T] fp32. Returns (loss, grad_hidden [T, H], grad_weight [V, H], nll [T])."""
        n = self.num_chunks
        x = self.cast(hidden, ms.float32)
        wt = self.cast(weight, ms.float32)
        tw = self.cast(token_weights, ms.float32)
        dim = wt.shape[1]
        xs = ops.reshape(x, (n, -1, dim))
        ts = ops.reshape(targets, (n, -1))
        ws = ops.reshape(tw, (n, -1))
        loss, nll, gh, gw = self._chunk(xs[0], wt, ts[0], ws[0])
        nlls, ghs = (nll,), (gh,)
        for i in range(1, n):
            # chunk i starts only after chunk i-1 is folded into grad_weight: without this order the
            # executor may run every chunk's matmul first and hold all [m x V] buffers at once
            part_loss, nll, gh, part_w = self._chunk(ops.depend(xs[i], gw), wt, ts[i], ws[i])
            loss = loss + part_loss
            nlls = nlls + (nll,)
            ghs = ghs + (gh,)
            gw = gw + part_w
        if n > 1:
            nll = ops.concat(nlls, 0)
            gh = ops.concat(ghs, 0)
        return loss, gh, gw, nll

    def bprop(self, hidden, weight, targets, token_weights, out, dout):
        scale = dout[0]
        return (self.cast(out[1] * scale, hidden.dtype), self.cast(out[2] * scale, weight.dtype),
                ops.zeros_like(targets), self.cast(out[3] * scale, token_weights.dtype))
