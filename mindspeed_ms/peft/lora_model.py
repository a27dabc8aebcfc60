"""Put LoRA adapters on a built Qwen2-VL model, by `--lora-target-modules`.

Target names follow peft (what MindSpeed-MM passes its `--lora-target-modules` to): a plain name
such as `linear_qkv` matches every Linear whose module path is that name or ends with `.<name>`,
so `linear_qkv linear_proj linear_fc1 linear_fc2` reach the LLM layers, the ViT blocks
(`image_encoder.encoder.blocks.layers.N.*`) and the projector MLP
(`image_encoder.projector.encoder.linear_fc1/2`) alike -- the same set of adapters, with the same
names, as a MindSpeed-MM LoRA checkpoint. A dotted suffix narrows it
(`self_attention.linear_qkv`), and a name holding a regular-expression character is matched against
the whole module path (`text_decoder\\..*linear_qkv` for the LLM only, `image_encoder\\..*` for
the vision side only).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor

from mindspeed_ms.models.layers import Linear
from mindspeed_ms.peft.lora_layer import LoRALinear

GATE_NAME = "lora_gate"
_REGEX_CHARS = set("*+?[]()|\\^$")


class LoRAConfigError(ValueError):
    """Bad LoRA flags (the message names the flag)."""


def check_lora_options(target_modules, r, alpha, dropout):
    if not target_modules:
        raise LoRAConfigError("--lora-target-modules is empty: name the linear layers that get adapters, e.g. "
                              "linear_qkv linear_proj linear_fc1 linear_fc2")
    if r <= 0:
        raise LoRAConfigError(f"--lora-r must be a positive rank, got {r}")
    if alpha <= 0:
        raise LoRAConfigError(f"--lora-alpha must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise LoRAConfigError(f"--lora-dropout must be in [0, 1), got {dropout}")
    for t in target_modules:
        if any(c in _REGEX_CHARS for c in t):
            try:
                re.compile(t)
            except re.error as e:
                raise LoRAConfigError(f"--lora-target-modules {t!r} is not a valid regular expression: {e}") from None


def target_matches(target: str, module: str) -> bool:
    if any(c in _REGEX_CHARS for c in target):
        return re.fullmatch(target, module) is not None
    return module == target or module.endswith("." + target)


@dataclass
class LoRAAdapters:
    """What `apply_lora` did: the adapter layers, their parameters, the shared gate."""
    layers: List[LoRALinear]
    gate: Parameter
    r: int
    alpha: float
    dropout: float
    target_modules: List[str]
    params: Dict[str, Parameter] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        return float(self.alpha) / float(self.r)

    def config(self) -> dict:
        """Saved beside the adapter weights (`lora_config` of the rank file) for merging and checks."""
        return {"r": int(self.r), "alpha": float(self.alpha), "dropout": float(self.dropout),
                "target_modules": list(self.target_modules), "adapter": "default"}

    def set_enabled(self, on: bool):
        self.gate.set_data(Tensor(1.0 if on else 0.0, self.gate.dtype))

    @contextlib.contextmanager
    def disabled(self):
        """The base model: every adapter off (the DPO reference with LoRA)."""
        self.set_enabled(False)
        try:
            yield
        finally:
            self.set_enabled(True)

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {n: p.asnumpy() for n, p in self.params.items()}


def _linear_sites(model):
    """(parent cell, attribute, Linear) for every plain Linear of the model, in module order."""
    sites = []
    for _, cell in model.cells_and_names():
        for attr, child in list(cell._cells.items()):  # noqa: SLF001 - the only way to see attribute names
            if type(child) is Linear:
                sites.append((cell, attr, child))
    return sites


def _module_path(linear) -> str:
    name = linear.weight.name
    if not name.endswith(".weight"):
        raise LoRAConfigError(f"cannot name the adapter of a Linear whose weight is called {name!r}")
    return name[:-len(".weight")]


def apply_lora(model, target_modules, r=8, alpha=16, dropout=0.0, seed=1234) -> LoRAAdapters:
    """Wrap the target Linears of `model` (the Qwen2-VL model or its loss cell) with `LoRALinear`,
    freeze every other parameter, and return the adapters. Parameter names of the base model do
    not change; A is drawn from `seed` (same seed, same adapters)."""
    target_modules = list(target_modules)
    check_lora_options(target_modules, r, alpha, dropout)
    original = {id(p): p.name for p in model.get_parameters()}
    sites = _linear_sites(model)
    all_modules = [_module_path(lin) for _, _, lin in sites]
    for t in target_modules:
        if not any(target_matches(t, m) for m in all_modules):
            other = sorted({m.rsplit(".", 1)[-1] for m in all_modules})
            raise LoRAConfigError(f"--lora-target-modules {t!r} matches no linear layer of the model; its linear "
                                  f"layers are named {', '.join(other)} (LoRA applies to linear layers only)")
    gate = Parameter(Tensor(1.0, ms.float32), name=GATE_NAME, requires_grad=False)
    rng = np.random.default_rng(seed)
    layers, params = [], {}
    for parent, attr, lin in sites:
        module = _module_path(lin)
        if not any(target_matches(t, module) for t in target_modules):
            continue
        layer = LoRALinear(lin, module, r, alpha, dropout, gate, rng)
        a_name, b_name = layer.lora_a.name, layer.lora_b.name
        setattr(parent, attr, layer)
        layers.append(layer)
        params[a_name], params[b_name] = layer.lora_a, layer.lora_b
    # Cell.__setattr__ re-prefixes the names of the parameters it adopts; put every name back to the
    # checkpoint name (MM names for the base, peft names for the adapters).
    for p in model.get_parameters():
        if id(p) in original:
            p.name = original[id(p)]
    for name, p in params.items():
        p.name = name
    gate.name = GATE_NAME
    for p in model.get_parameters():
        p.requires_grad = p.name in params
    return LoRAAdapters(layers, gate, r, alpha, dropout, target_modules, params)
