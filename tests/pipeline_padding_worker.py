"""One training step of the tiny model with and without empty micro-batches padding the step, on
this process's data-parallel rank (alone, or as one of the msrun workers): the CPU check of what
the Ascend pipeline does when a step has fewer micro-batches than stages.

    python tests/pipeline_padding_worker.py OUT_DIR [LOSS_FLAG]      (or under msrun)

Writes OUT_DIR/rank{R}.npz: loss, grad norm, the rank's accumulated gradients and the updated
parameters, for the plain step ("plain_*") and the padded step ("padded_*")."""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import collate, make_samples, small_model_json  # noqa: E402

from mindspeed_ms.arguments import parse_args, validate_args  # noqa: E402
from mindspeed_ms.training.backend import dist_env  # noqa: E402
from mindspeed_ms.training.build import build_model, init_runtime  # noqa: E402
from mindspeed_ms.training.data_feed import DataFeed  # noqa: E402
from mindspeed_ms.training.train_log import TrainLogger  # noqa: E402
from mindspeed_ms.training.trainer import Trainer  # noqa: E402

EMPTY = 2          # empty micro-batches added to the step (as for GA 2 under PP 4)


def _state(tr):
    return {"params": {n: p.asnumpy().copy() for n, p in tr.named_params.items()},
            "opt": tr.optimizer.state_dict(), "sched": tr.schedule.state_dict()}


def _restore(tr, state):
    import mindspore as ms
    for n, p in tr.named_params.items():
        p.set_data(ms.Tensor(state["params"][n]))
    tr.optimizer.load_state_dict(state["opt"], "start")
    tr.schedule.load_state_dict(state["sched"])


def main(out_dir, loss_flag=""):
    """Both steps on one trainer (one compiled micro-step graph serves both: same shapes), from the
    same parameters and optimizer state; the padded one runs EMPTY more micro-batches."""
    rank, world = dist_env()
    os.makedirs(out_dir, exist_ok=True)
    mj = small_model_json(os.path.join(out_dir, f"model_{rank}.json"))
    args = parse_args(f"--mm-model {mj} --seq-length 64 --seed 7 --lr 5e-3 --train-iters 2 --micro-batch-size 1 "
                      f"--global-batch-size {2 * world} --lr-decay-style constant --clip-grad 0 {loss_flag}".split())
    st = validate_args(args, world, "CPU", require_data=False)
    log = TrainLogger(args.train_iters, rank == world - 1)
    init_runtime(args, "CPU", world, log)
    samples = make_samples(2 * world, seed=11)
    model = build_model(st.model, args, "CPU")
    feed = DataFeed(len(samples), lambda idx: collate(model, samples, idx), args.micro_batch_size, world,
                    rank, args.grad_acc_steps, args.seed, shuffle=False)
    tr = Trainer(args, st, rank, world, log, model, feed)
    assert tr.step_micro_batches == args.grad_acc_steps == 2 and not tr.whole_step
    step = tr.feed.next_step()
    start = _state(tr)
    out = {}
    for kind, n_micro in (("plain", args.grad_acc_steps), ("padded", args.grad_acc_steps + EMPTY)):
        _restore(tr, start)
        tr.step_micro_batches = n_micro
        loss, norm, _, tokens = tr.train_step([dict(mb) for mb in step])
        out[f"{kind}_loss"], out[f"{kind}_norm"], out[f"{kind}_tokens"] = loss, norm, tokens
        for p, g in zip(tr.trainable, tr.accum):
            out[f"{kind}_grad.{p.name}"] = g.asnumpy()
            out[f"{kind}_param.{p.name}"] = p.asnumpy()
    out["compilations"] = tr.micro.compilations
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1], " ".join(sys.argv[2:]))
