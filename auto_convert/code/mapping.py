"""The PyTorch -> MindSpore API table (``mapping.json``): loading, validation, and a CPU check
that every MindSpore target actually runs (many ``mint`` ops have no CPU kernel in 2.10)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

DEFAULT_MAPPING = os.path.join(os.path.dirname(__file__), "mapping.json")

_API_KEYS = {"to", "args", "positional", "rename", "defaults", "values", "drop_if", "drop", "as_tuple",
             "varargs", "unsupported", "cell", "check"}
_METHOD_KINDS = {"shape", "method", "function"}


@dataclass
class ApiRule:
    name: str                      # fully qualified torch name
    to: str                        # fully qualified MindSpore name
    args: list[str] | None = None  # torch parameters in positional order; None: not a call rule
    positional: int | None = None
    rename: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    drop_if: dict[str, list[str]] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)
    as_tuple: list[str] = field(default_factory=list)
    varargs: bool = False
    unsupported: list[str] = field(default_factory=list)
    cell: bool = False
    check: str = ""

    @property
    def rewrites_call(self) -> bool:
        """True when a bare reference (not a call) would lose a needed argument change."""
        return bool(self.rename or self.defaults or self.values or self.as_tuple or self.varargs
                    or (self.positional is not None and self.args and self.positional < len(self.args)
                        and any(a in self.rename for a in self.args[self.positional:])))


@dataclass
class MethodRule:
    name: str
    kind: str
    to: str = ""
    varargs: bool = False
    check: str = ""


@dataclass
class Mapping:
    apis: dict[str, ApiRule]
    tensor_methods: dict[str, MethodRule]
    aliases: dict[str, str]
    cell_methods: dict[str, str]
    path: str


def load_mapping(path: str | None = None) -> Mapping:
    """Read and validate a mapping file; errors name the file and the entry."""
    path = path or DEFAULT_MAPPING
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read API mapping {path}: {e}") from e
    apis = {}
    for name, spec in raw.get("apis", {}).items():
        unknown = set(spec) - _API_KEYS
        if unknown or "to" not in spec:
            raise ValueError(f"{path}: entry '{name}': " + (f"unknown keys {sorted(unknown)}" if unknown else "missing 'to'"))
        rule = ApiRule(name=name, **spec)
        params = set(rule.args or [])
        for key in ("rename", "values", "drop_if"):
            bad = set(getattr(rule, key)) - params
            if bad:
                raise ValueError(f"{path}: entry '{name}': '{key}' names {sorted(bad)} that are not in 'args'")
        bad = (set(rule.drop) | set(rule.as_tuple) | set(rule.unsupported)) - params
        if bad:
            raise ValueError(f"{path}: entry '{name}': {sorted(bad)} not in 'args'")
        apis[name] = rule
    methods = {}
    for name, spec in raw.get("tensor_methods", {}).items():
        if name.startswith("_"):
            continue
        if spec.get("kind") not in _METHOD_KINDS:
            raise ValueError(f"{path}: tensor method '{name}': kind must be one of {sorted(_METHOD_KINDS)}")
        methods[name] = MethodRule(name=name, **spec)
    aliases = raw.get("aliases", {})
    return Mapping(apis, methods, aliases, raw.get("methods_of_cells", {}), path)


_CHECK_SETUP = """
import numpy as np
import mindspore as ms
from mindspore import mint, nn, ops
_rng = np.random.default_rng(0)
x = ms.Tensor(_rng.standard_normal((2, 3, 4)).astype(np.float32))
y = ms.Tensor(_rng.standard_normal((2, 3, 4)).astype(np.float32))
lg = ms.Tensor(_rng.standard_normal((4, 5)).astype(np.float32))
i = ms.Tensor(np.array([1, -100, 2, 3]), ms.int64)
ii = ms.Tensor(np.array([[1, 2, 0], [3, 4, 5]]), ms.int64)
"""


def check_mapping(mapping: Mapping) -> list[tuple[str, str]]:
    """Run every entry's ``check`` expression with MindSpore on this machine's device.

    Returns (entry, error) for each failure, and for each entry without a check.  MindSpore's
    PyNative mode reports a missing kernel on the failing call and once more on the next call,
    so a throwaway op runs after each failure to keep the next entry's result its own."""
    env: dict = {}
    exec(_CHECK_SETUP, env)  # noqa: S102 - fixed setup text above
    ms = env["ms"]
    failures = []
    entries = [(n, r.check) for n, r in mapping.apis.items()] + \
              [(f"Tensor.{n}", r.check) for n, r in mapping.tensor_methods.items()]
    for name, expr in entries:
        if not expr:
            failures.append((name, "no 'check' expression in the mapping"))
            continue
        try:
            out = eval(expr, env)  # noqa: S307 - expressions come from the shipped mapping file
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, ms.Tensor):
                    t.asnumpy()
        except Exception as e:  # a kernel error surfaces as RuntimeError/SystemError/TypeError...
            failures.append((name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            for _ in range(2):
                try:
                    (env["x"] + 1).asnumpy()
                except Exception:
                    pass
    return failures
