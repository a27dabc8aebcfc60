"""Pipeline layouts with fewer micro-batches per step than stages (MindSpeed-MM's 7B system test:
TP1 PP4 on 8 devices, global batch 4): validated for Ascend with a notice of the bubble cost, the
shard plan passes the static checks, the step is padded with empty micro-batches, and on CPU
(alone and data-parallel under msrun) those leave the loss and the gradients unchanged."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ST_MODEL = os.path.join(HERE, "fixtures", "mindspeed_mm_configs", "v2.2.0", "st_finetune_qwen2vl_7B_model_7B.json")

sys.path.insert(0, HERE)
from test_parallel_train_setup import model_json, work  # noqa: E402,F401  (work: the tiny checkpoint + data fixture)

from mindspeed_ms.arguments import parse_args, validate_args  # noqa: E402
from mindspeed_ms.parallel.checker import check_plan  # noqa: E402
from mindspeed_ms.parallel.config import ParallelConfigError, validate_parallel_config  # noqa: E402
from mindspeed_ms.parallel.shard_plan import build_shard_plan  # noqa: E402
from mindspeed_ms.parallel.train_setup import autoparallel_settings, stack_micro_batches  # noqa: E402
from mindspeed_ms.training.empty_micro_batches import pad_with_empty  # noqa: E402

# tests/st/shell_scripts/finetune_qwen2vl_7B.sh of MindSpeed-MM (the flags that reach the model)
ST_FLAGS = ("--use-mcore-models --tensor-model-parallel-size 1 --pipeline-model-parallel-size 4 "
            "--context-parallel-size 1 --micro-batch-size 1 --global-batch-size 4 --tokenizer-type NullTokenizer "
            "--vocab-size 152064 --seq-length 1024 --make-vocab-size-divisible-by 1 --normalization RMSNorm "
            "--use-fused-rmsnorm --swiglu --use-fused-swiglu --no-masked-softmax-fusion --lr 1.0e-5 "
            "--lr-decay-style cosine --weight-decay 0 --train-iters 3 --lr-warmup-fraction 0.1 --clip-grad 0.0 "
            "--adam-beta1 0.9 --adam-beta2 0.999 --no-gradient-accumulation-fusion --no-load-optim --no-load-rng "
            "--no-save-optim --no-save-rng --seed 42 --bf16 --variable-seq-lengths --use-distributed-optimizer "
            "--use-flash-attn --log-interval 1 --save-interval 5000 --eval-interval 5000 --eval-iters 5000 "
            "--log-tps --distributed-backend nccl")


def test_mindspeed_mm_7b_system_test_layout_validates_for_ascend():
    args = parse_args(f"--mm-model {ST_MODEL} {ST_FLAGS}".split())
    st = validate_args(args, 8, "Ascend", require_data=False)
    cfg = st.parallel
    assert (cfg.dp, cfg.tp, cfg.pp, cfg.num_micro_batches, cfg.pipeline_micro_batches) == (2, 1, 4, 2, 4)
    notes = [n for n in st.notices if "empty micro-batch" in n]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "2 micro-batch(es) per step" in notes[0] and "2 empty" in notes[0]
    assert "7 pipeline slots per step instead of Megatron's 5" in notes[0]
    plan = build_shard_plan(st.model, cfg, backend="Ascend", bf16=True)
    assert check_plan(plan) == []
    settings = autoparallel_settings(plan, [2] * 10)
    assert settings.micro_wrapper == "Pipeline" and settings.micro_size == 4
    assert settings.pipeline == {"stages": 4, "interleave": False, "scheduler": "1f1b"}


def test_padding_rules():
    from mindspeed_ms.config.model_config import load_model_json
    m = load_model_json(ST_MODEL)
    one = validate_parallel_config({"pipeline_model_parallel_size": 4, "global_batch_size": 2}, m, 8)
    assert (one.num_micro_batches, one.pipeline_micro_batches) == (1, 4)
    enough = validate_parallel_config({"pipeline_model_parallel_size": 4, "global_batch_size": 10}, m, 8)
    assert enough.pipeline_micro_batches == 5 and not any("empty" in n for n in enough.notices)
    m.vision.pipeline_num_layers = [32, 0, 0, 0, 0, 0, 0, 0]
    m.text.pipeline_num_layers = [1, 4, 4, 4, 4, 4, 4, 3]
    vpp = validate_parallel_config({"pipeline_model_parallel_size": 4, "virtual_pipeline_model_parallel_size": 2,
                                    "global_batch_size": 4}, m, 8)
    assert vpp.pipeline_micro_batches == 4       # padded to pp, a multiple of pp
    with pytest.raises(ParallelConfigError, match=r"multiple of --pipeline-model-parallel-size 4"):
        validate_parallel_config({"pipeline_model_parallel_size": 4, "virtual_pipeline_model_parallel_size": 2,
                                  "global_batch_size": 12}, m, 8)


def test_pad_with_empty_copies_inputs_with_zero_weight():
    rng = np.random.default_rng(0)
    mbs = [{"input_ids": rng.integers(0, 9, (1, 8)), "loss_weights": rng.random((1, 8)).astype(np.float32),
            "position_ids": rng.integers(0, 9, (3, 1, 8))} for _ in range(2)]
    padded = pad_with_empty(mbs, 4)
    assert len(padded) == 4 and padded[:2] == mbs
    for e in padded[2:]:
        np.testing.assert_array_equal(e["input_ids"], mbs[1]["input_ids"])
        assert not e["loss_weights"].any() and e["loss_weights"].dtype == np.float32
    assert mbs[1]["loss_weights"].all()                          # the real one is untouched
    stacked = stack_micro_batches(padded, ["input_ids", "position_ids", "loss_weights"])
    assert stacked[0].shape == (4, 8) and stacked[1].shape == (4, 3, 8) and not stacked[2][2:].any()
    assert pad_with_empty(mbs, 2) == mbs
    with pytest.raises(ValueError, match="loss weights"):
        pad_with_empty([{"input_ids": 1}], 3)


def _check_unchanged(res):
    for key in ("loss", "norm", "tokens"):
        assert abs(float(res[f"padded_{key}"]) - float(res[f"plain_{key}"])) <= 1e-6 * abs(float(res[f"plain_{key}"]))
    grads = [k[len("plain_grad."):] for k in res.files if k.startswith("plain_grad.")]
    assert grads and int(res["compilations"]) == 1
    for n in grads:
        a, b = res[f"plain_grad.{n}"], res[f"padded_grad.{n}"]
        scale = max(float(np.abs(a).max()), 1e-30)
        assert float(np.abs(a - b).max()) <= 1e-6 * scale, n
        p, q = res[f"plain_param.{n}"], res[f"padded_param.{n}"]
        assert float(np.abs(p - q).max()) <= 1e-6 * max(float(np.abs(p).max()), 1e-30), n


@pytest.mark.parametrize("loss_flag", ["", pytest.param("--calculate-per-token-loss", marks=pytest.mark.slow)])
def test_empty_micro_batches_leave_loss_and_gradients_unchanged(tmp_path, loss_flag):
    sys.path.insert(0, HERE)
    from pipeline_padding_worker import main
    main(str(tmp_path), loss_flag)
    _check_unchanged(np.load(tmp_path / "rank0.npz"))


@pytest.mark.slow
def test_empty_micro_batches_under_msrun_data_parallel(tmp_path):
    msrun = shutil.which("msrun") or os.path.join(os.path.dirname(sys.executable), "msrun")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    r = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", "--master_port=8163",
                        f"--log_dir={tmp_path}/msrun_log", "--join=True",
                        os.path.join(HERE, "pipeline_padding_worker.py"), str(tmp_path / "out")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = "".join(open(os.path.join(tmp_path, "msrun_log", f)).read()[-3000:]
                   for f in sorted(os.listdir(tmp_path / "msrun_log")))
    assert r.returncode == 0, logs
    for rank in (0, 1):
        _check_unchanged(np.load(tmp_path / "out" / f"rank{rank}.npz"))


def test_sharded_step_inputs_are_padded_to_the_pipeline_micro_size():
    """ShardedTrainer.step_inputs: weights over the real micro-batches, then the empty ones, stacked."""
    import types
    from mindspeed_ms.training.loss_weights import make_loss_weights
    from mindspeed_ms.training.sharded_trainer import ShardedTrainer
    rng = np.random.default_rng(1)
    mbs = [{"input_ids": rng.integers(0, 9, (1, 8)), "labels": np.where(rng.random((1, 8)) > 0.3, 5, -100)}
           for _ in range(2)]

    def weights(self, micro_batches, _):
        for mb in micro_batches:
            mb["loss_weights"] = make_loss_weights(mb["labels"], "default", len(micro_batches), 1)

    fake = types.SimpleNamespace(ga=2, settings=types.SimpleNamespace(micro_size=4), keys=["input_ids", "loss_weights"],
                                 _global_valid_tokens=lambda mb: None)
    fake._weights = types.MethodType(weights, fake)
    ids, w = ShardedTrainer.step_inputs(fake, mbs)
    assert ids.shape == (4, 8) and w.shape[0] == 4
    np.testing.assert_array_equal(ids[2], ids[1])
    assert not w[2:].any() and w[:2].sum() == pytest.approx(1.0, rel=1e-6)   # normalised over the real 2


@pytest.mark.slow
def test_dry_sharded_trainer_runs_the_pipeline_padded(work):
    """The Ascend sharded path built on CPU up to compilation (tiny model, TP1 PP4 on 8 devices,
    global batch 2 = 1 micro-batch per dp rank): MindSpore's Pipeline cell gets 4 micro-batches and
    the step's inputs are the real micro-batch followed by 3 empty copies."""
    from mindspore.parallel.nn import Pipeline
    from mindspeed_ms.training.sharded_trainer import dry_run
    mj = model_json(work, "pad", [4, 0, 0, 0], [1, 1, 1, 1])
    argv = (f"--mm-data {work}/data.json --mm-model {mj} --micro-batch-size 1 --seq-length 256 --lr 1e-4 "
            f"--train-iters 2 --seed 3 --pipeline-model-parallel-size 4 --global-batch-size 2").split()
    tr = dry_run(argv, 7, 8)
    assert (tr.pcfg.num_micro_batches, tr.settings.micro_size, tr.step_micro_batches) == (1, 4, 4)
    assert isinstance(tr.step_cell.net, Pipeline) and tr.step_cell.net.micro_size == 4
    inputs = dict(zip(tr.keys, tr.step_inputs(tr.feed.next_step())))
    ids, w = inputs["input_ids"], inputs["loss_weights"]
    assert ids.shape[0] == 4 and w.shape[0] == 4 and w[0].any() and not w[1:].any()
    for k in range(1, 4):
        np.testing.assert_array_equal(ids[k], ids[0])
