"""training.optimizer.AdamW (fused CPU kernel and explicit formula) + GradNormClip against
torch.optim.AdamW + clip_grad_norm_ over several steps with a changing learning rate."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn

from mindspeed_ms.training.optimizer import AdamW, GradNormClip, uses_weight_decay
from helpers.numerics import assert_close_scaled


class _Step(nn.Cell):
    def __init__(self, opt, clip):
        super().__init__(auto_prefix=False)
        self.opt = opt
        self.clip = GradNormClip(clip)

    def construct(self, grads, a, b, c):
        grads, norm = self.clip(grads)
        return self.opt(grads, a, b, c), norm


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_with_clipping_matches_torch(fused):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    shapes = {"layer.weight": (48, 32), "layer.bias": (48,), "norm.weight": (32,), "emb.weight": (100, 32)}
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    params = [Parameter(Tensor(a), name=n) for n, a in init.items()]
    opt = AdamW(params, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    assert opt.fused                       # fp32 parameters take the fused kernel
    opt.fused = fused
    step = _Step(opt, clip=1.0)

    tparams = {n: torch.tensor(a, requires_grad=True) for n, a in init.items()}
    groups = [{"params": [p for n, p in tparams.items() if uses_weight_decay(n, p)], "weight_decay": 0.1},
              {"params": [p for n, p in tparams.items() if not uses_weight_decay(n, p)], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    for i, lr in enumerate([1e-2, 3e-2, 2e-2, 0.0, 1e-2, 5e-3]):
        grads = {n: (rng.standard_normal(s) * (0.05 if i % 2 else 3.0)).astype(np.float32)   # clipped / not
                 for n, s in shapes.items()}
        _, norm = step(tuple(Tensor(grads[n]) for n in shapes), *opt.host_scalars(lr))
        opt.step += 1
        for n, p in tparams.items():
            p.grad = torch.tensor(grads[n])
        tnorm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
        for g in topt.param_groups:
            g["lr"] = lr
        topt.step()
        np.testing.assert_allclose(float(norm.asnumpy()), float(tnorm), rtol=1e-5)
        for p in params:
            assert_close_scaled(p.asnumpy(), tparams[p.name].detach().numpy(), 2e-6, f"step {i + 1} {p.name}")
    state = opt.state_dict()
    tstate = topt.state_dict()["state"]
    order = [n for g in groups for n, p in tparams.items() if any(p is q for q in g["params"])]
    for idx, name in enumerate(order):
        np.testing.assert_allclose(state["exp_avg"][name], tstate[idx]["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state["exp_avg_sq"][name], tstate[idx]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)
