"""Static checks of a shard plan: what semi-auto parallel would reject at compile time on Ascend,
and what would make a sharded run disagree with the mm-convert checkpoint layout, found on CPU.
"""
from typing import List

from mindspeed_ms.parallel.layout import ParallelConfigError
from mindspeed_ms.parallel.rank_params import full_param_shapes, param_owner
from mindspeed_ms.parallel.shard_plan import ShardPlan


def _prod(xs):
    n = 1
    for x in xs:
        n *= x
    return n


def check_plan(plan: ShardPlan) -> List[str]:
    """Return every problem found (empty list: the plan is consistent)."""
    cfg = plan.cfg
    problems = []
    if cfg.dp * cfg.tp * cfg.cp * cfg.pp != cfg.world_size:
        problems.append(f"mesh dp {cfg.dp} x tp {cfg.tp} x cp {cfg.cp} x pp {cfg.pp} != world {cfg.world_size}")
    stage_devices = cfg.devices_per_stage
    for e in plan.entries:
        where = f"{e.cell}.{e.prim}"
        if not 0 <= e.stage < cfg.pp:
            problems.append(f"{where}: stage {e.stage} outside 0..{cfg.pp - 1}")
        if len(e.strategy) != len(e.shapes):
            problems.append(f"{where}: {len(e.strategy)} strategies for {len(e.shapes)} inputs")
            continue
        for i, (s, shape) in enumerate(zip(e.strategy, e.shapes)):
            if len(s) != len(shape):
                problems.append(f"{where}: input {i} strategy {s} has rank {len(s)}, shape {shape} rank {len(shape)}")
                continue
            for d, (n, k) in enumerate(zip(shape, s)):
                if k < 1 or n % k:
                    problems.append(f"{where}: input {i} dim {d} of size {n} is not divisible by its split {k}")
            total = _prod(s)
            if stage_devices % total:
                problems.append(f"{where}: input {i} strategy {s} uses {total} devices, which does not divide "
                                f"the {stage_devices} devices of a pipeline stage")
        for a, da, b, db in e.contractions:
            if e.strategy[a][da] != e.strategy[b][db]:
                problems.append(f"{where}: contracted dims (input {a} dim {da}, input {b} dim {db}) split "
                                f"{e.strategy[a][da]} vs {e.strategy[b][db]}")
        if e.out_strategy is not None:
            for s in e.out_strategy:
                if stage_devices % _prod(s):
                    problems.append(f"{where}: out_strategy {s} does not divide the stage's {stage_devices} devices")
        if e.role in ("column-bias", "row-bias") and e.strategy[0][-1] != e.strategy[1][0]:
            problems.append(f"{where}: bias split {e.strategy[1][0]} differs from the features split "
                            f"{e.strategy[0][-1]}")
    problems += _check_params(plan)
    return problems


def _check_params(plan: ShardPlan) -> List[str]:
    problems = []
    shapes = full_param_shapes(plan)
    seen = {}
    for e in plan.entries:
        for idx, name in e.params.items():
            where = f"{e.cell}.{e.prim}"
            if name not in shapes:
                problems.append(f"{where}: parameter {name} is not a MindSpeed-MM parameter")
                continue
            if tuple(e.shapes[idx]) != tuple(shapes[name]):
                problems.append(f"{where}: input {idx} shape {e.shapes[idx]} != parameter {name} {shapes[name]}")
            split = tuple(e.strategy[idx])
            if name in seen and seen[name][0] != split:
                problems.append(f"parameter {name}: split {split} in {where} but {seen[name][0]} in {seen[name][1]}")
            seen[name] = (split, where)
            if _prod(split) not in (1, plan.cfg.tp) or any(k not in (1, plan.cfg.tp) for k in split):
                problems.append(f"parameter {name}: split {split} is not a tensor-parallel split (tp {plan.cfg.tp})")
    owner = param_owner(plan)
    for name in shapes:
        if name not in owner:
            problems.append(f"parameter {name} belongs to no Cell of the plan (no pipeline stage)")
    return problems


def assert_plan_ok(plan: ShardPlan):
    problems = check_plan(plan)
    if problems:
        raise ParallelConfigError("shard plan check failed:\n  " + "\n  ".join(problems))
