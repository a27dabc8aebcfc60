"""The training log as Megatron's readers see it: a tiny run's log parsed with regexes written from
Megatron's / MindSpeed-MM's line formats (iteration line, `report_memory` line, the system-test
harness's pattern, the scripts' awk fields); `--log-tps` against its definition on batches with
known padding; throughput, ETA and the progress line after Megatron's fields; the same scalars in
TensorBoard and W&B; W&B without network / without the package; no transformers banner."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from train_synthetic import collate, make_samples, small_model_json  # noqa: E402

from mindspeed_ms.training.train_log import TrainLogger, Window, format_iteration_line  # noqa: E402

# Megatron's training_log fields, in order (global batch size .. nan iterations), as it formats them;
# the optional loss-dict entry before the loss is MindSpeed-MM's "tokens per sample" (--log-tps)
MEGATRON_LINE = re.compile(
    r" \[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] iteration +(\d+)/ +(\d+) \|"
    r" consumed samples: +(\d+) \|"
    r" elapsed time per iteration \(ms\): (\d+\.\d) \|"
    r" learning rate: (\d\.\d{6}E[+-]\d\d) \|"
    r" global batch size: +(\d+) \|"
    r"(?: tokens per sample: (\d\.\d{6}E[+-]\d\d) \|)?"
    r" lm loss: (\d\.\d{6}E[+-]\d\d) \|"
    r" loss scale: 1\.0 \|"
    r"(?: grad norm: (\d+\.\d{3}) \|)?"
    r" number of skipped iterations: +(\d+) \|"
    r" number of nan iterations: +(\d+) \|")
# Megatron's report_memory, printed "[Rank {rank}] {name} memory (MB) | allocated: {} | ..."
MEMORY_LINE = re.compile(r"^\[Rank (\d+)\] \(after (\d+) iterations\) memory \(MB\) \| allocated: ([0-9.]+) \| "
                         r"max allocated: ([0-9.]+) \| reserved: ([0-9.]+) \| max reserved: ([0-9.]+)$")
# MindSpeed-MM tests/st/test_tools: the pattern its system tests read loss and time with
HARNESS = re.compile(r"elapsed time per iteration \(ms\):\s+([0-9.]+)\s+\|.*?loss:\s+([0-9.]+E[+-][0-9]+)")
OURS = re.compile(r" throughput: ([0-9.]+) tokens/s, ([0-9.]+) samples/s \| ETA: (\d+):(\d\d):(\d\d) \|"
                  r"(?: real tokens/sample: ([0-9.]+) \|)?$")


class FakeWandb:
    """Records what a W&B run is given (wandb is not installed here)."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], False

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-iteration run, --log-interval 1 --log-tps, logged to a string (no TTY, as under msrun),
    TensorBoard and a recording W&B; batches of known padding (the collator pads to multiples of 8)."""
    from test_train_loop import make_trainer
    from mindspeed_ms.training import wandb_writer
    tmp = tmp_path_factory.mktemp("log")
    samples = make_samples(4, seed=1) + make_samples(2, seed=2, answer_len=30)
    tr = make_trainer(tmp, "--lr 5e-3 --train-iters 3 --micro-batch-size 1 --global-batch-size 2 --log-interval 1 "
                           "--lr-decay-style constant --log-tps --wandb-project p --wandb-exp-name e "
                           f"--wandb-save-dir {tmp}/wb", samples)
    stream = io.StringIO()
    tr.log = TrainLogger(3, True, tensorboard_dir=str(tmp / "tb"), stream=stream, log_tps=True)
    fake = FakeWandb()
    old_mod, old_reach = sys.modules.get("wandb"), wandb_writer._reachable
    sys.modules["wandb"], wandb_writer._reachable = fake, lambda timeout=3.0: False
    old_mode = os.environ.pop("WANDB_MODE", None)
    try:
        wandb_writer.attach_wandb(tr.log, tr.args)
        mode = os.environ.get("WANDB_MODE")
        # GA 2 x micro-batch 1: step k = micro-batches order[2k], order[2k + 1], each padded alone
        order = tr.feed.order(0)
        steps = [[collate(tr.model, samples, [int(order[2 * k + i])]) for i in range(2)] for k in range(3)]
        tr.train()
        tr.log.close()
    finally:
        wandb_writer._reachable = old_reach
        if old_mod is None:
            sys.modules.pop("wandb", None)
        else:
            sys.modules["wandb"] = old_mod
        os.environ.pop("WANDB_MODE", None)
        if old_mode is not None:
            os.environ["WANDB_MODE"] = old_mode
    return {"log": stream.getvalue(), "steps": steps, "wandb": fake, "mode": mode, "tmp": tmp, "samples": samples}


def test_iteration_lines_are_megatron_lines_with_our_fields_after(run):
    lines = [l for l in run["log"].splitlines() if "elapsed time per iteration" in l]
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        m = MEGATRON_LINE.match(line)
        assert m, line
        assert (int(m[2]), int(m[3]), int(m[4]), int(m[7])) == (i, 3, 2 * i, 2)
        assert int(m[11]) == 0 and int(m[12]) == 0 and m[10] is not None
        rest = line[m.end():]
        o = OURS.match(rest)
        assert o, rest
        # throughput and ETA from the elapsed time: samples/s = gbs / time, ETA = remaining x time
        ms = float(m[5])
        assert abs(float(o[2]) - 2 * 1000.0 / ms) <= 0.0005 + 0.01 * 2 * 1000.0 / ms       # printed %.3f
        eta = int(o[3]) * 3600 + int(o[4]) * 60 + int(o[5])
        assert abs(eta - (3 - i) * ms / 1000.0) <= 1.0
        assert abs(float(o[1]) - 2 * 1000.0 / ms * float(m[8])) <= 0.05 + 0.01 * float(o[1])
        # the scripts' awk: field 5 split on ':' is the elapsed time; 'tokens per sample:' up to '|'
        assert float(line.split(":")[4].split("|")[0]) == ms
        assert float(line.split("tokens per sample:")[1].split("|")[0]) == float(m[8])
        h = HARNESS.search(line)
        assert float(h[1]) == ms and float(h[2]) == float(m[9])


def test_log_tps_is_the_padded_sequence_length(run):
    """MindSpeed-MM's tokens per sample = the sequence length of the logits (the padded batch), mean
    over micro-batches, DP ranks and logged iterations; the real (non-padding) figure stays an extra."""
    lines = [l for l in run["log"].splitlines() if "elapsed time per iteration" in l]
    for line, step in zip(lines, run["steps"]):
        m, o = MEGATRON_LINE.match(line), OURS.search(line)
        padded = np.mean([mb["input_ids"].shape[1] for mb in step])
        real = sum(float(mb["attention_mask"].sum()) for mb in step) / 2
        assert float(m[8]) == pytest.approx(padded, rel=1e-6)
        assert float(o[6]) == pytest.approx(real, abs=0.05)
        assert all(mb["input_ids"].shape[1] % 8 == 0 for mb in step) and padded > real   # padding is there
    # the two shapes differ: the figure follows the batch
    assert len({float(MEGATRON_LINE.match(l)[8]) for l in lines}) > 1


def test_memory_line_once_after_the_first_logged_iteration(run):
    lines = run["log"].splitlines()
    mem = [(i, MEMORY_LINE.match(l)) for i, l in enumerate(lines) if "memory (MB)" in l]
    assert len(mem) == 1 and mem[0][1], mem
    idx, m = mem[0]
    first_iter = next(i for i, l in enumerate(lines) if "elapsed time per iteration" in l)
    assert idx > first_iter and (int(m[1]), int(m[2])) == (0, 1)
    alloc, max_alloc, res, max_res = (float(m[k]) for k in range(3, 7))
    assert 0 < alloc <= max_alloc and 0 < res <= max_res
    # CPU: the process's resident set (MindSpore's CPU pool reports 0): a real figure, > 100 MB here
    assert max_alloc > 100


def test_progress_line_without_a_terminal(run):
    prog = [l for l in run["log"].splitlines() if l.startswith(" progress: ")]
    assert [re.search(r"\] (\d+)/3 \(", l)[1] for l in prog] == ["1", "2", "3"]
    assert prog[-1].startswith(" progress: [" + "#" * 20 + "] 3/3 (100%)") and "ETA 0:00:00" in prog[-1]


def test_tensorboard_and_wandb_get_the_same_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run["tmp"] / "tb"))
    acc.Reload()
    tb = set(acc.Tags()["scalars"])
    want = {"lm loss", "learning-rate", "tokens-per-sample", "iteration-time", "samples-per-second",
            "tokens-per-second", "eta-seconds", "real-tokens-per-sample", "grad-norm"}
    assert want <= tb
    fake = run["wandb"]
    assert fake.inits[0]["project"] == "p" and fake.inits[0]["name"] == "e"
    assert fake.inits[0]["dir"] == str(run["tmp"] / "wb") and fake.finished
    wb = {k for _, d in fake.logged for k in d}
    assert wb == tb
    tb_tps = [e.value for e in acc.Scalars("tokens-per-second")]
    wb_tps = [d["tokens-per-second"] for _, d in fake.logged if "tokens-per-second" in d]
    np.testing.assert_allclose(tb_tps, wb_tps, rtol=1e-6)
    # no network: offline mode, said in one line
    assert run["mode"] == "offline"
    notes = [l for l in run["log"].splitlines() if "wandb: no network" in l]
    assert len(notes) == 1 and "offline" in notes[0]


def test_wandb_flags_without_the_package_and_bad_combinations(tmp_path):
    from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args
    from mindspeed_ms.training import wandb_writer
    mj = small_model_json(str(tmp_path / "m.json"))
    base = f"--mm-model {mj} --seq-length 64 --lr 1e-4 --train-iters 1"
    with pytest.raises(ArgumentError, match=r"--wandb-project p needs --wandb-exp-name"):
        validate_args(parse_args(f"{base} --wandb-project p".split()), 1, "CPU", require_data=False)
    with pytest.raises(ArgumentError, match=r"--wandb-save-dir"):
        validate_args(parse_args(f"{base} --wandb-project p --wandb-exp-name e".split()), 1, "CPU",
                      require_data=False)
    args = parse_args(f"{base} --wandb-project p --wandb-exp-name e --save {tmp_path}/s".split())
    validate_args(args, 1, "CPU", require_data=False)
    stream = io.StringIO()
    log = TrainLogger(1, True, stream=stream)
    old = sys.modules.get("wandb")
    sys.modules["wandb"] = None                 # import wandb -> ImportError
    try:
        assert wandb_writer.attach_wandb(log, args) is None
    finally:
        sys.modules.pop("wandb", None)
        if old is not None:
            sys.modules["wandb"] = old
    out = stream.getvalue().splitlines()
    assert len(out) == 1 and out[0].startswith("notice: --wandb-project p: the wandb package is not installed")
    assert log.wandb is None and not (tmp_path / "s").exists()


def test_format_keeps_megatron_fields_without_log_tps():
    line = format_iteration_line(5, 10, 40, 123.4, 1e-4, 8, 2.5, 1.0, None, Window(123.4, 8, 5, 96.0).fields(False))
    m = MEGATRON_LINE.match(line)
    assert m and m[8] is None and OURS.match(line[m.end():])[6] is None


_HIDE_TORCH = ("import sys\nfor n in ('torch', 'tensorflow', 'flax', 'jax'):\n    sys.modules[n] = None\n")


@pytest.mark.parametrize("ours_first", [True, False])
def test_no_transformers_banner_on_our_commands(ours_first):
    """Without torch, importing transformers prints its advisory banner; our package switches it off
    (the control, importing transformers alone, shows the banner, so the check can fail)."""
    code = _HIDE_TORCH + ("import mindspeed_ms.data.tokenizer\n" if ours_first else "") + "import transformers\n"
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("None of PyTorch" in r.stderr) == (not ours_first), r.stderr


def test_printed_loss_is_the_log_interval_mean_as_in_megatron():
    stream = io.StringIO()
    log = TrainLogger(4, True, stream=stream)
    for it, loss in enumerate([4.0, 2.0, 3.0, 1.0], 1):
        log.iteration(it, 2 * it, 10.0, 1e-4, 2, loss, 1.0, None, it % 2 == 0, Window(10.0, 2, 4 - it, 8.0))
    losses = [float(MEGATRON_LINE.match(l)[9]) for l in stream.getvalue().splitlines() if "lm loss" in l]
    assert losses == [3.0, 2.0] and [l for _, l in log.history] == [4.0, 2.0, 3.0, 1.0]
