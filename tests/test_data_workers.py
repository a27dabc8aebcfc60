"""Background loading (--num-workers) and packing in pretrain_vlm.py's feed: workers 0 and N give the
same batches in the same order; a feed restored from a saved position (with workers, with packing)
continues exactly as the uninterrupted one; pretrain_vlm.py with packing and workers resumes bit for
bit and equals the run without workers (slow)."""
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from test_data_dataset import MIXED, MM_ATTR, media, tok_dir, write  # noqa: F401 (fixtures)


def data_json(media, tok_dir, **basic):
    obj = {"dataset_param": {"dataset_type": "huggingface",
                             "preprocess_parameters": {"model_name_or_path": tok_dir, "image_max_pixels": 128 * 128},
                             "basic_parameters": {"template": "qwen2vl", "dataset_dir": str(media),
                                                  "dataset": write(media / "t.json", MIXED * 4), **basic},
                             "attr": dict(MM_ATTR)},
           "dataloader_param": {"collate_param": {"model_name": "qwen2vl"}}}
    return write(media / f"data_{len(basic)}.json", obj)


_BUILT = {}


def feed(path, workers, mbs=2, ga=2):
    """make_feed (build_feed's second half) over datasets preprocessed once per data.json."""
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.collator import build_collator
    from mindspeed_ms.data.dataset import build_datasets
    from mindspeed_ms.training.build import make_feed
    args = SimpleNamespace(mm_data=path, seq_length=256, seed=5, micro_batch_size=mbs, data_parallel_size=1,
                           grad_acc_steps=ga, num_workers=workers)
    cfg = load_data_json(path)
    if path not in _BUILT:
        _BUILT[path] = build_datasets(cfg, 256, seed=5)[0]
    return make_feed(args, cfg, _BUILT[path], None, build_collator(cfg, 256), 0)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("packing", [False, True])
def test_workers_give_the_same_batches_and_resume_exactly(media, tok_dir, packing):
    path = data_json(media, tok_dir, **({"neat_packing": True} if packing else {}))
    sizes = (1, 2) if packing else (2, 2)        # packing: 20 samples in a few rows
    ref = feed(path, 0, *sizes)
    if packing:
        assert "packed_segments" in ref.next_step()[0] and ref.summary.startswith(" > packing (neat)")
        ref = feed(path, 0, *sizes)
    steps = ref.n // ref.gbs + 2                                  # over an epoch boundary
    want = [ref.next_step() for _ in range(steps)]
    par = feed(path, 2, *sizes)
    assert par.num_workers == min(2, os.cpu_count())
    for w in want:
        same(par.next_step(), w)
    assert par.state_dict() == ref.state_dict()
    par.close()
    # resume mid-run (prefetched steps pending) from a saved position
    first = feed(path, 2, *sizes)
    for _ in range(3):
        first.next_step()
    state = dict(first.state_dict(), consumed_samples=3 * first.gbs)
    first.close()
    again = feed(path, 2, *sizes)
    again.next_step()                                            # its own prefetch, then dropped by the load
    again.load_state_dict(state)
    for w in want[3:]:
        same(again.next_step(), w)
    again.close()


def test_packing_key_errors(media, tok_dir):
    path = data_json(media, tok_dir, neat_packing=True, streaming=True)
    with pytest.raises(ValueError, match="packing needs every sample's length"):
        feed(path, 0)


LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|")


@pytest.mark.slow
def test_pretrain_with_packing_and_workers_resumes_bit_for_bit(tmp_path):
    from test_train_e2e import ROOT, TINY_MODEL, _env
    w = tmp_path
    py, env = sys.executable, _env()
    for cmd in ([py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{w}/hf"],
                [py, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{w}/data", "--train", "64", "--val", "8",
                 "--no-llava"],
                [py, "-m", "mindspeed_ms.checkpoint.cli", "Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", f"{w}/mm",
                 "--cfg.hf_config.hf_dir", f"{w}/hf", "--cfg.parallel_config.llm_pp_layers", "[[2]]",
                 "--cfg.parallel_config.vit_pp_layers", "[[2]]", "--cfg.parallel_config.tp_size", "1"]):
        subprocess.run(cmd, check=True, env=env, cwd=str(w), capture_output=True, timeout=300)
    cfg = json.load(open(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny.json")))
    b = cfg["dataset_param"]["basic_parameters"]
    b.update(dataset=f"{w}/data/train.json", dataset_dir=f"{w}/data", cache_dir=f"{w}/data/cache", neat_packing=True)
    b.pop("val_dataset")
    cfg["dataset_param"]["preprocess_parameters"]["model_name_or_path"] = f"{w}/hf"
    (w / "data.json").write_text(json.dumps(cfg))

    def train(extra):
        flags = (f"--micro-batch-size 1 --global-batch-size 2 --seq-length 256 --lr 2e-3 --lr-decay-style cosine "
                 f"--lr-warmup-iters 1 --train-iters 4 --clip-grad 1.0 --seed 42 --mm-data {w}/data.json "
                 f"--mm-model {TINY_MODEL} --log-interval 1 --calculate-per-sample-loss {extra}").split()
        r = subprocess.run([py, os.path.join(ROOT, "pretrain_vlm.py")] + flags, env=env, cwd=str(w),
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return {int(i): v for i, v in LOSS.findall(r.stdout)}, r.stdout

    full, out = train(f"--load {w}/mm --num-workers 2 --save {w}/s1 --save-interval 2")
    assert "packing (neat)" in out and sorted(full) == [1, 2, 3, 4]
    sync, _ = train(f"--load {w}/mm --num-workers 0")
    assert sync == full                                           # the printed losses, digit for digit
    resumed, _ = train(f"--load {w}/s1 --num-workers 2")
    from mindspeed_ms.training.checkpointing import load_checkpoint
    assert load_checkpoint(f"{w}/s1")["iteration"] == 4
    assert sorted(resumed) == []                                  # s1 holds iteration 4: nothing left to train
    import shutil
    shutil.rmtree(f"{w}/s1/iter_0000004")
    (w / "s1" / "latest_checkpointed_iteration.txt").write_text("2")
    resumed, _ = train(f"--load {w}/s1 --num-workers 2")
    assert resumed == {3: full[3], 4: full[4]}
