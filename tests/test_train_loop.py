"""The training loop on the real tiny model with synthetic batches: compilations, checkpoints,
gradient accumulation in every loss mode, exact resume, and kill -9 during a save."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import ROOT, collate, make_samples, small_model_json  # noqa: E402

import mindspore as ms  # noqa: E402

from mindspeed_ms.arguments import parse_args, validate_args  # noqa: E402
from mindspeed_ms.training.build import build_model, init_runtime  # noqa: E402
from mindspeed_ms.training.data_feed import DataFeed  # noqa: E402
from mindspeed_ms.training.train_log import TrainLogger  # noqa: E402
from mindspeed_ms.training.trainer import Trainer  # noqa: E402
from helpers.numerics import assert_close_scaled


def make_trainer(tmp_path, flags, samples, model_json=None, model=None):
    mj = model_json or small_model_json(str(tmp_path / "model.json"))
    args = parse_args(f"--mm-model {mj} --seq-length 64 --seed 7 {flags}".split())
    st = validate_args(args, 1, "CPU", require_data=False)
    log = TrainLogger(args.train_iters, True)
    init_runtime(args, "CPU", 1, log)
    model = model or build_model(st.model, args, "CPU")
    feed = DataFeed(len(samples), lambda idx: collate(model, samples, idx), args.micro_batch_size, 1, 0,
                    args.grad_acc_steps, args.seed, shuffle=True)
    return Trainer(args, st, 0, 1, log, model, feed)


def run(trainer, steps):
    out = []
    for _ in range(steps):
        loss, norm, lr, _ = trainer.train_step(trainer.feed.next_step())
        out.append(loss)
    return out


def test_train_compiles_once_saves_mm_layout_and_learns(tmp_path):
    """Fast end-to-end: 4 steps over batches of 3 different shapes compile one training graph
    (dynamic shapes on CPU; never more graphs than shape buckets), the loss falls on a repeated
    batch, and the checkpoint has MindSpeed-MM's layout with optimizer state."""
    from mindspeed_ms.training.checkpointing import load_checkpoint
    samples = make_samples(4, seed=1) + make_samples(2, seed=2, grid=(1, 4, 8))
    tr = make_trainer(tmp_path, f"--lr 5e-3 --train-iters 4 --micro-batch-size 2 --global-batch-size 2 "
                                f"--lr-decay-style constant --save {tmp_path}/save --clip-grad 1.0", samples)
    tr.feed.shuffle = False
    losses = run(tr, 3)                                         # three different shapes
    assert tr.feed.buckets_seen() >= 2 and 1 <= tr.micro.compilations <= tr.feed.buckets_seen()
    assert tr.micro.compilations == 1
    first = tr.train_step([collate(tr.model, samples, [0, 1])])[0]
    again = [tr.train_step([collate(tr.model, samples, [0, 1])])[0] for _ in range(3)]
    assert again[-1] < first and all(np.isfinite(losses))
    tr.save()
    root = tmp_path / "save"
    assert (root / "latest_checkpointed_iteration.txt").read_text() == "7"
    assert (root / "iter_0000007" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    ck = load_checkpoint(str(root))
    assert ck["iteration"] == 7 and ck["optimizer"]["step"] == 7
    name = "text_decoder.decoder.layers.0.self_attention.linear_qkv.weight"
    np.testing.assert_array_equal(ck["model"][name], tr.named_params[name].asnumpy())
    np.testing.assert_array_equal(ck["optimizer"]["exp_avg"][name], tr.optimizer.exp_avg[
        [p.name for p in tr.trainable].index(name)].asnumpy())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["", "--calculate-per-sample-loss", "--calculate-per-token-loss"])
def test_grad_acc_4x1_equals_mbs_4(tmp_path, mode):
    """GA 4 x micro-batch 1 == micro-batch 4 (<= 1e-5 per step) in each loss mode. The default mode
    is a token mean per micro-batch (MindSpeed-MM), equal across the two only when the samples have
    the same number of label tokens; the other modes must agree for any lengths."""
    samples = make_samples(16, seed=3, answer_len=5 if mode == "" else None)
    mj = small_model_json(str(tmp_path / "model.json"))
    common = f"--lr 2e-3 --train-iters 4 --global-batch-size 4 --lr-decay-style cosine --lr-warmup-iters 1 " \
             f"--clip-grad 1.0 --weight-decay 0.1 {mode}"
    a = make_trainer(tmp_path, common + " --micro-batch-size 1", samples, mj)
    init = {n: p.asnumpy().copy() for n, p in a.named_params.items()}
    la = run(a, 4)
    b = make_trainer(tmp_path, common + " --micro-batch-size 4", samples, mj)
    for n, p in b.named_params.items():
        p.set_data(ms.Tensor(init[n]))
    lb = run(b, 4)
    assert a.ga == 4 and b.ga == 1
    assert_close_scaled(la, lb, 2e-6)
    name = "text_decoder.decoder.layers.1.mlp.linear_fc1.weight"
    assert_close_scaled(a.named_params[name].asnumpy(), b.named_params[name].asnumpy(), 1e-4)


@pytest.mark.slow
def test_resume_reproduces_losses_exactly(tmp_path):
    """10 steps with a save at 5; a fresh process-state trainer loading iteration 5 reproduces
    steps 6-10 bit for bit (model, AdamW moments, lr schedule, data position, RNG)."""
    samples = make_samples(24, seed=4)
    mj = small_model_json(str(tmp_path / "model.json"))
    flags = f"--lr 2e-3 --train-iters 10 --micro-batch-size 2 --global-batch-size 4 --lr-decay-style cosine " \
            f"--lr-warmup-fraction 0.2 --save {tmp_path}/a --save-interval 5 --log-interval 1"
    a = make_trainer(tmp_path, flags, samples, mj)
    init = {n: p.asnumpy().copy() for n, p in a.named_params.items()}
    full = []
    while a.iteration < 10:
        full.append(a.train_step(a.feed.next_step())[0])
        if a.iteration == 5:
            a.save()
    resume_dir = tmp_path / "b"
    resume_dir.mkdir()
    shutil.copytree(tmp_path / "a" / "iter_0000005", resume_dir / "iter_0000005")
    (resume_dir / "latest_checkpointed_iteration.txt").write_text("5")
    b = make_trainer(tmp_path, flags.replace(f"{tmp_path}/a", f"{tmp_path}/c") + f" --load {resume_dir}",
                     samples, mj)
    for n, p in b.named_params.items():     # scramble: everything must come from the checkpoint
        p.set_data(ms.Tensor(init[n] * 0 + 0.5))
    b.load()
    assert b.iteration == 5 and b.consumed == 20
    resumed = [b.train_step(b.feed.next_step())[0] for _ in range(5)]
    assert resumed == full[5:], (resumed, full[5:])


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    import mindspeed_ms.checkpoint.mm_io as mm_io
    from mindspeed_ms.training.checkpointing import save_checkpoint
    model = {{"text_decoder.decoder.final_layernorm.weight": np.full(8, 2.0, np.float32)}}
    real = mm_io.write_rank_payload
    def half_then_die(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    mm_io.write_rank_payload = half_then_die
    save_checkpoint({save!r}, 10, model, "torch", optimizer={{"step": 10, "exp_avg": {{}}, "exp_avg_sq": {{}}}})
""")


def test_kill_9_during_save_keeps_previous_checkpoint(tmp_path):
    from mindspeed_ms.training.checkpointing import load_checkpoint, save_checkpoint
    save = str(tmp_path / "save")
    model = {"text_decoder.decoder.final_layernorm.weight": np.full(8, 1.0, np.float32)}
    save_checkpoint(save, 5, model, "torch", optimizer={"step": 5, "exp_avg": {}, "exp_avg_sq": {}})
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=ROOT, save=save))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert any(n.startswith(".tmp-") for n in os.listdir(save))          # the half-written attempt
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "5"
    ck = load_checkpoint(save)
    assert ck["iteration"] == 5 and float(ck["model"]["text_decoder.decoder.final_layernorm.weight"][0]) == 1.0
    save_checkpoint(save, 10, model, "torch")                            # the next save cleans up
    assert not any(n.startswith(".tmp-") for n in os.listdir(save))
    assert load_checkpoint(save)["iteration"] == 10
