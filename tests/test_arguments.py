"""The command line: every flag of the reference scripts parses, bad input is one clear error."""
import json
import os
import re
import shlex

import pytest

from mindspeed_ms.arguments import ArgumentError, TrainingArgs, no_effect_flags, parse_args, validate_args

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY_MODEL = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")

# The 7B script's GPT_ARGS / MM_ARGS / OUTPUT_ARGS, verbatim from MindSpeed-MM (mindspeed_mm_compat.md s.2)
SCRIPT_7B = """--use-mcore-models --tensor-model-parallel-size 1 --pipeline-model-parallel-size 4
 --context-parallel-size 1 --context-parallel-algo ulysses_cp_algo --micro-batch-size 1 --global-batch-size 192
 --tokenizer-type NullTokenizer --vocab-size 152064 --seq-length 1024 --make-vocab-size-divisible-by 1
 --normalization RMSNorm --use-fused-rmsnorm --swiglu --use-fused-swiglu --no-masked-softmax-fusion --lr 1.0e-5
 --lr-decay-style cosine --weight-decay 0 --train-iters 10000 --lr-warmup-fraction 0.1 --clip-grad 0.0
 --adam-beta1 0.9 --adam-beta2 0.999 --no-gradient-accumulation-fusion --seed 42 --bf16 --load ckpt
 --variable-seq-lengths --use-distributed-optimizer --use-flash-attn --no-load-optim --no-load-rng
 --no-save-optim --no-save-rng --num-workers 8 --distributed-timeout-minutes 20
 --mm-data d.json --mm-model m.json --mm-tool t.json
 --log-interval 1 --save-interval 10000 --eval-interval 10000 --eval-iters 5000 --save save_dir
 --ckpt-format torch --log-tps --ai-framework mindspore --distributed-backend nccl"""

DPO_LORA = """--dpo-beta 0.1 --dpo-loss-type sigmoid --dpo-label-smoothing 0.0 --pref-ftx 0.0 --ref-model ref
 --lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 8 --lora-alpha 16
 --reuse-fp32-param --enable-dummy-optimizer --calculate-per-token-loss --tensorboard-dir tb"""


def test_reference_script_flags_parse_typed():
    a = parse_args(shlex.split(SCRIPT_7B + " " + DPO_LORA))
    assert isinstance(a, TrainingArgs)
    assert a.pipeline_model_parallel_size == 4 and a.global_batch_size == 192
    assert a.lr == pytest.approx(1e-5) and isinstance(a.lr, float)
    assert a.bf16 and a.no_save_optim and a.log_tps and a.ckpt_format == "torch"
    assert a.lora_target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    assert a.mm_data == "d.json" and a.load == "ckpt" and a.seed == 42
    assert a.calculate_per_token_loss and a.loss_mode == "per_token"


def test_unknown_flag_is_an_error_naming_it():
    with pytest.raises(ArgumentError, match=r"--use-fused-rmsnrom"):
        parse_args(["--lr", "1e-5", "--use-fused-rmsnrom"])
    with pytest.raises(ArgumentError, match=r"--lr"):
        parse_args(["--lr", "fast"])
    with pytest.raises(ArgumentError, match=r"ckpt-format"):
        parse_args(["--ckpt-format", "torch_dist"])


def test_kernel_flags_reported_once_on_cpu_not_on_ascend():
    a = parse_args(shlex.split(SCRIPT_7B))
    cpu = no_effect_flags(a, "CPU")
    for flag in ("--use-fused-rmsnorm", "--use-flash-attn", "--no-gradient-accumulation-fusion", "--use-mcore-models"):
        assert flag in cpu
    assert any(f.startswith("--bf16") for f in cpu)
    assert len(cpu) == len(set(cpu))
    ascend = no_effect_flags(a, "Ascend")
    assert "--use-flash-attn" not in ascend and "--no-gradient-accumulation-fusion" in ascend


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(p)


def _base(tmp_path, extra=""):
    data = _write(tmp_path, "data.json", {"dataset_param": {}})
    return shlex.split(f"--mm-data {data} --mm-model {TINY_MODEL} --seq-length 64 --lr 1e-4 --train-iters 5 "
                       f"--micro-batch-size 1 {extra}")


def _one_paragraph(msg):
    assert "\n\n" not in msg and "Traceback" not in msg
    return msg


def test_valid_tiny_setup(tmp_path):
    a = parse_args(_base(tmp_path, "--global-batch-size 4 --vocab-size 151936 --use-fused-rmsnorm"))
    st = validate_args(a, world_size=2, backend="CPU")
    assert a.data_parallel_size == 2 and a.grad_acc_steps == 2
    assert st.model.text.vocab_size == 151936
    assert any("--use-fused-rmsnorm" in n for n in st.notices)


@pytest.mark.parametrize("extra,world,pattern", [
    ("--mm-data /nonexistent/data.json", 1, r"--mm-data /nonexistent/data.json: no such file"),
    ("--vocab-size 152064", 1, r"--vocab-size 152064 disagrees with .*model_tiny.json: text_decoder.vocab_size = 151936"),
    ("--num-layers 28", 1, r"--num-layers 28 disagrees"),
    ("--global-batch-size 3", 2, r"--global-batch-size 3 is not divisible by --micro-batch-size x DP = 1 x 2"),
    ("--tensor-model-parallel-size 2", 2, r"semi-auto parallel.*CPU"),
    ("--load /nonexistent/ckpt", 1, r"--load /nonexistent/ckpt: no such directory"),
    ("--calculate-per-sample-loss --calculate-per-token-loss", 1, r"mutually exclusive"),
])
def test_bad_input_one_paragraph(tmp_path, extra, world, pattern):
    argv = _base(tmp_path)
    if extra.startswith("--mm-data"):
        argv = [x for x in argv]
        argv[argv.index("--mm-data") + 1] = extra.split()[1]
    else:
        argv += shlex.split(extra)
    with pytest.raises(ArgumentError) as e:
        validate_args(parse_args(argv), world_size=world, backend="CPU")
    assert re.search(pattern, _one_paragraph(str(e.value))), str(e.value)


def test_load_dir_without_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArgumentError, match="latest_checkpointed_iteration.txt is missing"):
        validate_args(parse_args(_base(tmp_path, f"--load {empty}")), world_size=1)


def test_tp_allowed_on_ascend_validation(tmp_path):
    a = parse_args(_base(tmp_path, "--tensor-model-parallel-size 2 --global-batch-size 2"))
    st = validate_args(a, world_size=4, backend="Ascend")
    assert st.parallel.tp == 2 and a.data_parallel_size == 2
