"""mm-convert end to end on tiny checkpoints: bitwise round trips over TP/PP/VPP layouts, layout facts
read with real torch, resplit, .pt vs safetensors, the training-save API, and bad input."""
import json
import os

import ml_dtypes
import numpy as np
import pytest

from mindspeed_ms.checkpoint import cli
from mindspeed_ms.checkpoint.converter import hf_to_mm, mm_to_hf, resplit
from mindspeed_ms.checkpoint.hf_io import load_hf_state_dict
from mindspeed_ms.checkpoint.layout import latest_tag
from mindspeed_ms.checkpoint.mm_io import (MMCheckpointReader, rank_shapes, read_mm_checkpoint, split_for_rank,
                                           write_mm_checkpoint)
from mindspeed_ms.checkpoint.names import hf_to_mm_state_dict
from mindspeed_ms.checkpoint.pp_split import LayoutError, ParallelLayout
from test_convert_fixtures import make_tiny_hf

H, HEADS, KV, HD, FFN, VOCAB = 32, 8, 4, 4, 48, 64
VD, VHEADS, VHD = 16, 4, 4


def bits(a):
    return str(np.asarray(a).dtype), np.asarray(a).shape, np.ascontiguousarray(a).tobytes()


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert bits(a[k]) == bits(b[k]), k


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    cfg, sd = make_tiny_hf(d / "untied", shards=3)
    tcfg, tsd = make_tiny_hf(d / "tied", shards=1, tie=True, seed=1)
    return {"untied": (d / "untied", cfg, sd), "tied": (d / "tied", tcfg, tsd)}


LAYOUTS = [
    (1, [[6]], [[4]]),
    (2, [[1, 5]], [[4, 0]]),                       # uneven
    (4, [[0, 1, 5, 0]], [[3, 1, 0, 0]]),           # zero-layer first and last stages
    (2, [[0, 0, 0, 1], [2, 1, 1, 1]], [[1, 1, 1, 1], [0, 0, 0, 0]]),  # 7B-vpp-like: pp 4, vpp 2
    (1, [2, 4], [4, 0]),                            # flat form
]


@pytest.mark.parametrize("tp,llm,vit", LAYOUTS)
@pytest.mark.parametrize("kind", ["untied", "tied"])
def test_hf_mm_hf_bitwise(tmp_path, hf, tp, llm, vit, kind):
    hf_dir, cfg, sd = hf[kind]
    hf_to_mm(hf_dir, tmp_path / "mm", llm, vit, tp, progress=False)
    assert latest_tag(tmp_path / "mm") == "release"
    reader = MMCheckpointReader(tmp_path / "mm")
    assert reader.layout == ParallelLayout.build(tp, llm, vit)  # deduced from the files alone
    mm_to_hf(tmp_path / "mm", hf_dir, tmp_path / "back", llm, vit, tp, progress=False)
    back = load_hf_state_dict(tmp_path / "back")
    assert_same(back, sd)
    assert back["model.norm.weight"].dtype == ml_dtypes.bfloat16
    # shard plan and side files follow the source
    src_files = sorted(f for f in os.listdir(hf_dir))
    assert sorted(f for f in os.listdir(tmp_path / "back") if f != ".mm-convert.json") == src_files  # + manifest
    if (hf_dir / "model.safetensors.index.json").exists():
        a = json.loads((hf_dir / "model.safetensors.index.json").read_text())
        b = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
        assert a == b
    # the merged MM state dict equals the direct tp1/pp1 conversion (tied pp>1 adds only the head copy)
    merged, _ = read_mm_checkpoint(tmp_path / "mm", hf_config=cfg)
    assert_same(merged, hf_to_mm_state_dict(sd, cfg))


def _torch_load(path):
    torch = pytest.importorskip("torch")
    return torch.load(path, weights_only=True)


def _np(t):
    import torch
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def test_layout_facts_tensor_by_tensor(tmp_path, hf):
    """Read the rank files with real torch and check every placement rule against the HF tensors."""
    hf_dir, cfg, sd = hf["untied"]
    f32 = {k: v.astype(np.float32) for k, v in sd.items()}
    hf_to_mm(hf_dir, tmp_path / "mm", [[2, 4]], [[4, 0]], 2, progress=False)
    rel = tmp_path / "mm" / "release"
    assert sorted(os.listdir(rel)) == ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    qpg, gpr = HEADS // KV, KV // 2  # query heads per group, groups per rank
    for r in range(2):
        s0 = _torch_load(rel / f"mp_rank_{r:02d}_000" / "model_optim_rng.pt")
        s1 = _torch_load(rel / f"mp_rank_{r:02d}_001" / "model_optim_rng.pt")
        assert s0["checkpoint_version"] == 3.0 and set(s0) == {"model", "checkpoint_version"}
        m0, m1 = {k: _np(v) for k, v in s0["model"].items()}, {k: _np(v) for k, v in s1["model"].items()}
        # stage 0: patch_embed, all ViT layers, projector, embedding, LLM layers 0-1; stage 1: layers 2-5 as 0-3
        assert "image_encoder.encoder.patch_embed.proj.weight" in m0 and "image_encoder.projector.layernorm.weight" in m0
        assert "text_decoder.embedding.word_embeddings.weight" in m0
        assert not any(k.startswith(("text_decoder.decoder.final_layernorm", "text_decoder.output_layer")) for k in m0)
        assert not any(k.startswith(("image_encoder", "text_decoder.embedding")) for k in m1)
        assert {k.split(".")[3] for k in m0 if k.startswith("text_decoder.decoder.layers.")} == {"0", "1"}
        assert {k.split(".")[3] for k in m1 if k.startswith("text_decoder.decoder.layers.")} == {"0", "1", "2", "3"}
        assert "text_decoder.decoder.final_layernorm.weight" in m1 and "text_decoder.output_layer.weight" in m1
        # LLM qkv of local layer 1 on stage 1 = global layer 3: rank r holds whole groups r*gpr ..
        for p in ("weight", "bias"):
            qkv = m1[f"text_decoder.decoder.layers.1.self_attention.linear_qkv.{p}"]
            q, k, v = (f32[f"model.layers.3.self_attn.{n}_proj.{p}"] for n in "qkv")
            assert qkv.shape[0] == (HEADS + 2 * KV) * HD // 2
            rows = (qpg + 2) * HD
            for j in range(gpr):
                g = r * gpr + j
                blk = qkv[j * rows:(j + 1) * rows]
                np.testing.assert_array_equal(blk[:qpg * HD], q[g * qpg * HD:(g + 1) * qpg * HD])
                np.testing.assert_array_equal(blk[qpg * HD:(qpg + 1) * HD], k[g * HD:(g + 1) * HD])
                np.testing.assert_array_equal(blk[(qpg + 1) * HD:], v[g * HD:(g + 1) * HD])
        # GLU: rank r holds concat(gate[r], up[r])
        fc1 = m1["text_decoder.decoder.layers.1.mlp.linear_fc1.weight"]
        n = FFN // 2
        np.testing.assert_array_equal(fc1[:n], f32["model.layers.3.mlp.gate_proj.weight"][r * n:(r + 1) * n])
        np.testing.assert_array_equal(fc1[n:], f32["model.layers.3.mlp.up_proj.weight"][r * n:(r + 1) * n])
        # column splits
        np.testing.assert_array_equal(m1["text_decoder.decoder.layers.1.self_attention.linear_proj.weight"],
                                      f32["model.layers.3.self_attn.o_proj.weight"][:, r * H // 2:(r + 1) * H // 2])
        np.testing.assert_array_equal(m1["text_decoder.decoder.layers.1.mlp.linear_fc2.weight"],
                                      f32["model.layers.3.mlp.down_proj.weight"][:, r * n:(r + 1) * n])
        # vocab split and replicated norms
        np.testing.assert_array_equal(m0["text_decoder.embedding.word_embeddings.weight"],
                                      f32["model.embed_tokens.weight"][r * VOCAB // 2:(r + 1) * VOCAB // 2])
        np.testing.assert_array_equal(m1["text_decoder.output_layer.weight"],
                                      f32["lm_head.weight"][r * VOCAB // 2:(r + 1) * VOCAB // 2])
        np.testing.assert_array_equal(m1["text_decoder.decoder.final_layernorm.weight"], f32["model.norm.weight"])
        np.testing.assert_array_equal(m1["text_decoder.decoder.layers.0.input_layernorm.weight"],
                                      f32["model.layers.2.input_layernorm.weight"])
        # ViT qkv: rank r holds heads 2r, 2r+1, each as [q_h; k_h; v_h]
        vq = m0["image_encoder.encoder.blocks.layers.2.self_attention.linear_qkv.weight"]
        hq = f32["visual.blocks.2.attn.qkv.weight"]
        for j in range(VHEADS // 2):
            h = r * VHEADS // 2 + j
            for t in range(3):
                np.testing.assert_array_equal(vq[(3 * j + t) * VHD:(3 * j + t + 1) * VHD],
                                              hq[t * VD + h * VHD:t * VD + (h + 1) * VHD])
        np.testing.assert_array_equal(m0["image_encoder.encoder.blocks.layers.2.mlp.linear_fc1.bias"],
                                      f32["visual.blocks.2.mlp.fc1.bias"][r * 16:(r + 1) * 16])
        np.testing.assert_array_equal(m0["image_encoder.encoder.blocks.layers.2.self_attention.linear_proj.bias"],
                                      f32["visual.blocks.2.attn.proj.bias"])  # row-parallel bias: replicated
        np.testing.assert_array_equal(m0["image_encoder.projector.encoder.linear_fc2.weight"],
                                      f32["visual.merger.mlp.2.weight"][:, r * 32:(r + 1) * 32])
    assert (tmp_path / "mm" / "latest_checkpointed_iteration.txt").read_text() == "release"


def test_vpp_files_and_tied_copy(tmp_path, hf):
    hf_dir, cfg, sd = hf["tied"]
    llm, vit = [[0, 0, 0, 1], [2, 1, 1, 1]], [[1, 1, 1, 1], [0, 0, 0, 0]]
    hf_to_mm(hf_dir, tmp_path / "mm", llm, vit, 1, progress=False)
    rel = tmp_path / "mm" / "release"
    s3 = _torch_load(rel / "mp_rank_00_003" / "model_optim_rng.pt")
    assert set(s3) == {"model0", "model1", "checkpoint_version"}
    # chunk 0 of stage 3 = flat chunk 3: ViT layer 3 (local 0), projector, embedding, LLM layer 0
    c0 = s3["model0"]
    assert "image_encoder.encoder.blocks.layers.0.input_layernorm.weight" in c0
    assert "image_encoder.projector.layernorm.weight" in c0 and "text_decoder.embedding.word_embeddings.weight" in c0
    np.testing.assert_array_equal(_np(c0["image_encoder.encoder.blocks.layers.0.input_layernorm.weight"]),
                                  sd["visual.blocks.3.norm1.weight"].astype(np.float32))
    # chunk 1 of stage 3 = flat chunk 7: last LLM layer (global 5), final norm, tied head copy
    c1 = s3["model1"]
    np.testing.assert_array_equal(_np(c1["text_decoder.decoder.layers.0.input_layernorm.weight"]),
                                  sd["model.layers.5.input_layernorm.weight"].astype(np.float32))
    np.testing.assert_array_equal(_np(c1["text_decoder.output_layer.weight"]),
                                  sd["model.embed_tokens.weight"].astype(np.float32))
    s0 = _torch_load(rel / "mp_rank_00_000" / "model_optim_rng.pt")
    # chunk 1 of stage 0 = flat chunk 4: LLM layers 1-2 as local 0-1, nothing else
    assert sorted({k.split(".")[3] for k in s0["model1"]}) == ["0", "1"]
    assert all(k.startswith("text_decoder.decoder.layers.") for k in s0["model1"])
    np.testing.assert_array_equal(_np(s0["model1"]["text_decoder.decoder.layers.1.input_layernorm.weight"]),
                                  sd["model.layers.2.input_layernorm.weight"].astype(np.float32))
    assert "image_encoder.encoder.patch_embed.proj.weight" in s0["model0"]
    # split_for_rank / rank_shapes describe the files
    mm = hf_to_mm_state_dict(sd, cfg)
    layout = ParallelLayout.build(1, llm, vit)
    part = split_for_rank(mm, 0, 3, layout)
    shapes = rank_shapes({k: v.shape for k, v in mm.items()}, 0, 3, layout)
    assert set(part) == {"model0", "model1"}
    for key in part:
        assert {k: v.shape for k, v in part[key].items()} == shapes[key]
        assert sorted(part[key]) == sorted(s3[key])


def test_resplit_round_trip_and_formats(tmp_path, hf):
    hf_dir, cfg, sd = hf["untied"]
    hf_to_mm(hf_dir, tmp_path / "a", [[6]], [[4]], 1, progress=False)
    resplit(tmp_path / "a", tmp_path / "b", [2, 4], [4, 0], 2, [6], [4], 1, progress=False)
    hf_to_mm(hf_dir, tmp_path / "direct", [[2, 4]], [[4, 0]], 2, progress=False)
    for name in ("mp_rank_00_000", "mp_rank_01_001"):  # resplit files == direct conversion files
        x = _torch_load(tmp_path / "b" / "release" / name / "model_optim_rng.pt")["model"]
        y = _torch_load(tmp_path / "direct" / "release" / name / "model_optim_rng.pt")["model"]
        assert sorted(x) == sorted(y)
        import torch
        assert all(torch.equal(x[k], y[k]) and x[k].dtype == y[k].dtype for k in x)
    resplit(tmp_path / "b", tmp_path / "c", [6], [4], 1, [2, 4], [4, 0], 2, progress=False)
    a, _ = read_mm_checkpoint(tmp_path / "a")
    c, _ = read_mm_checkpoint(tmp_path / "c")
    assert_same(a, c)
    # safetensors rank files hold the same tensors as .pt ones
    hf_to_mm(hf_dir, tmp_path / "st", [[2, 4]], [[4, 0]], 2, fmt="safetensors", progress=False)
    assert os.path.isfile(tmp_path / "st" / "release" / "mp_rank_01_001" / "model_optim_rng.safetensors")
    s, rs = read_mm_checkpoint(tmp_path / "st")
    d, rd = read_mm_checkpoint(tmp_path / "direct")
    assert rs.fmt == "safetensors" and rd.fmt == "pt" and rs.layout == rd.layout
    assert_same(s, d)
    # and a vpp checkpoint resplit from safetensors to pt keeps every bit
    resplit(tmp_path / "st", tmp_path / "vpp", [[0, 0, 0, 1], [2, 1, 1, 1]], [[1, 1, 1, 1], [0, 0, 0, 0]], 2,
            fmt="pt", hf_dir=hf_dir, progress=False)
    v, rv = read_mm_checkpoint(tmp_path / "vpp")
    assert rv.layout.vpp == 2 and rv.fmt == "pt"
    assert_same(v, d)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_safetensors_rank_file_loads_in_mindspore(tmp_path, dtype):
    ms = pytest.importorskip("mindspore")
    if dtype == ml_dtypes.bfloat16:
        from mindspore.common import np_dtype
        if not np_dtype.np_dtype_valid(False):
            pytest.skip(f"this MindSpore build cannot hand bf16 to numpy {np.__version__} (built for numpy 1.x)")
    cfg, sd = make_tiny_hf(tmp_path / "hf", dtype=dtype)
    hf_to_mm(tmp_path / "hf", tmp_path / "st", [[6]], [[4]], 2, fmt="safetensors", progress=False)
    path = tmp_path / "st" / "release" / "mp_rank_01" / "model_optim_rng.safetensors"
    params = ms.load_checkpoint(str(path), format="safetensors")
    ours = MMCheckpointReader(tmp_path / "st")._chunks[(1, 0)][0]
    assert sorted(params) == sorted(ours.keys())
    for k in ours.keys():
        p = params[k]
        assert tuple(p.shape) == ours.get(k).shape
        assert p.dtype == (ms.bfloat16 if dtype == ml_dtypes.bfloat16 else ms.float32)
        np.testing.assert_array_equal(p.float().asnumpy(), ours.get(k).astype(np.float32))


def test_training_save_api(tmp_path, hf):
    hf_dir, cfg, sd = hf["untied"]
    mm = hf_to_mm_state_dict(sd, cfg)
    layout = ParallelLayout.build(2, [2, 4], [4, 0])
    for fmt in ("pt", "safetensors"):
        root = tmp_path / fmt

        def extra(t, p, it=10):
            return {"iteration": it, "rank": [t, p], "optimizer": {"exp_avg": np.full((3,), t + 10 * p, np.float32),
                                                                   "lr": 1e-4}}

        write_mm_checkpoint(root, 10, mm, layout, fmt=fmt, extra_per_rank=extra)
        assert latest_tag(root) == 10 and os.path.isdir(root / "iter_0000010" / "mp_rank_01_001")
        write_mm_checkpoint(root, 20, mm, layout, fmt=fmt, extra_per_rank=lambda t, p: extra(t, p, 20))
        assert (root / "latest_checkpointed_iteration.txt").read_text() == "20"
        got, reader = read_mm_checkpoint(root)
        assert reader.tag == 20 and reader.layout == layout
        assert_same(got, mm)
        e = reader.extras[(1, 1)]
        assert e["iteration"] == 20 and list(e["rank"]) == [1, 1] and e["optimizer"]["lr"] == 1e-4
        np.testing.assert_array_equal(e["optimizer"]["exp_avg"], np.full((3,), 11, np.float32))
        old, r10 = read_mm_checkpoint(root, tag=10)
        assert r10.extras[(0, 1)]["iteration"] == 10
        assert not [n for n in os.listdir(root) if n.startswith(".")]  # no temporaries left


def _run_cli(args):
    return cli.main(args)


def _hf_to_mm_args(hf_dir, mm_dir, llm, vit, tp):
    return ["Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", str(mm_dir), "--cfg.hf_config.hf_dir", str(hf_dir),
            "--cfg.parallel_config.llm_pp_layers", llm, "--cfg.parallel_config.vit_pp_layers", vit,
            "--cfg.parallel_config.tp_size", str(tp), "--cfg.progress", "false"]


def test_cli_readme_command_lines(tmp_path, hf, capsys):
    hf_dir, cfg, sd = hf["untied"]
    assert _run_cli(_hf_to_mm_args(hf_dir, tmp_path / "mm", "[[1,2,3]]", "[[4,0,0]]", 2)) == 0
    assert _run_cli(["Qwen2VLConverter", "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / "hf"),
                     "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.hf_config.hf_dir", str(hf_dir),
                     "--cfg.parallel_config.llm_pp_layers", "[1,2,3]", "--cfg.parallel_config.vit_pp_layers",
                     "[4,0,0]", "--cfg.parallel_config.tp_size", "2", "--cfg.progress", "false"]) == 0
    assert_same(load_hf_state_dict(tmp_path / "hf"), sd)
    assert _run_cli(["Qwen2VLConverter", "resplit", "--cfg.source_dir", str(tmp_path / "mm"),
                     "--cfg.target_dir", str(tmp_path / "rs"),
                     "--cfg.source_parallel_config.llm_pp_layers", "[1,2,3]",
                     "--cfg.source_parallel_config.vit_pp_layers", "[4,0,0]",
                     "--cfg.source_parallel_config.tp_size", "2",
                     "--cfg.target_parallel_config.llm_pp_layers", "[4,2]",
                     "--cfg.target_parallel_config.vit_pp_layers", "[4,0]",
                     "--cfg.target_parallel_config.tp_size", "1", "--cfg.progress", "false"]) == 0
    assert MMCheckpointReader(tmp_path / "rs").layout == ParallelLayout.build(1, [4, 2], [4, 0])
    # mm_to_hf with a layout that is not the checkpoint's: both named
    capsys.readouterr()
    assert _run_cli(["Qwen2VLConverter", "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / "hf2"),
                     "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.hf_config.hf_dir", str(hf_dir),
                     "--cfg.parallel_config.llm_pp_layers", "[3,3]", "--cfg.parallel_config.vit_pp_layers",
                     "[4,0]", "--cfg.parallel_config.tp_size", "2", "--cfg.progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "[3, 3]" in err and "[1, 2, 3]" in err and not (tmp_path / "hf2").exists()


def test_cli_help_explains_every_option(capsys):
    for action in ("hf_to_mm", "mm_to_hf", "resplit"):
        with pytest.raises(SystemExit):
            cli.main(["Qwen2VLConverter", action, "--help"])
        out = capsys.readouterr().out
        for opt in {"hf_to_mm": ["mm_dir", "hf_config.hf_dir", "parallel_config.llm_pp_layers", "parallel_config.vit_pp_layers", "parallel_config.tp_size", "ckpt_format"],
                    "mm_to_hf": ["save_hf_dir", "mm_dir", "hf_config.hf_dir", "parallel_config.tp_size"],
                    "resplit": ["source_dir", "target_dir", "source_parallel_config.tp_size",
                                "target_parallel_config.llm_pp_layers"]}[action]:
            assert f"--cfg.{opt}" in out
        assert "required" in out


@pytest.mark.parametrize("llm,vit,tp,msg", [
    ("[[1,2,2]]", "[[4,0,0]]", 1, "sum to 5 but num_hidden_layers is 6"),
    ("[[6]]", "[[3]]", 1, "sum to 3 but vision_config.depth is 4"),
    ("[[6]]", "[[4]]", 8, "tp_size 8 does not divide num_key_value_heads 4"),
    ("[[6]]", "[[4]]", 3, "tp_size 3 does not divide num_key_value_heads 4"),
    ("[[3,3]]", "[[4,0,0]]", 1, "same shape"),
    ("[[1,5]]", "[[2,2]]", 1, "before any LLM layer"),
])
def test_bad_layouts_fail_clearly_without_output(tmp_path, hf, capsys, llm, vit, tp, msg):
    hf_dir, cfg, sd = hf["untied"]
    assert _run_cli(_hf_to_mm_args(hf_dir, tmp_path / "mm", llm, vit, tp)) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "mm").exists()


def test_bad_hf_dirs_fail_clearly_without_output(tmp_path, capsys):
    make_tiny_hf(tmp_path / "noconf")
    os.remove(tmp_path / "noconf" / "config.json")
    make_tiny_hf(tmp_path / "noshard", shards=2)
    os.remove(tmp_path / "noshard" / "model-00002-of-00002.safetensors")
    make_tiny_hf(tmp_path / "trunc")
    p = tmp_path / "trunc" / "model.safetensors"
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 10)
    for d, msg in (("missing", "does not exist"), ("noconf", "no config.json"),
                   ("noshard", "model-00002-of-00002.safetensors"), ("trunc", "truncated")):
        assert _run_cli(_hf_to_mm_args(tmp_path / d, tmp_path / f"out_{d}", "[[6]]", "[[4]]", 1)) == 2
        assert msg in capsys.readouterr().err, d
        assert not (tmp_path / f"out_{d}").exists()


def test_failure_midway_keeps_previous_checkpoint(tmp_path, hf):
    """A conversion that fails after writing some rank files leaves the old checkpoint untouched."""
    hf_dir, cfg, sd = hf["untied"]
    hf_to_mm(hf_dir, tmp_path / "mm", [[6]], [[4]], 1, progress=False)
    before, _ = read_mm_checkpoint(tmp_path / "mm")
    bad = dict(sd)
    bad["model.layers.5.self_attn.k_proj.weight"] = sd["model.layers.5.self_attn.k_proj.weight"][:8]
    from test_convert_fixtures import write_hf_dir
    write_hf_dir(str(tmp_path / "badhf"), cfg, bad)
    with pytest.raises(ValueError, match="model.layers.5|layers.5"):
        hf_to_mm(tmp_path / "badhf", tmp_path / "mm", [[1, 5]], [[4, 0]], 1, progress=False)
    after, r = read_mm_checkpoint(tmp_path / "mm")
    assert r.layout.pp == 1
    assert_same(after, before)
    left = sorted(n for n in os.listdir(tmp_path / "mm") if n != ".mm-convert.json")  # the manifest is ours
    assert left == ["latest_checkpointed_iteration.txt", "release"]


def test_layout_errors_name_numbers():
    with pytest.raises(LayoutError, match="2 chunk"):
        ParallelLayout.build(1, [[1, 2], [3, 0]], [[4, 0]])
    with pytest.raises(LayoutError, match="non-negative"):
        ParallelLayout.build(1, [[-1, 7]], [[4, 0]])
    a, b = ParallelLayout.build(1, [6], [4]), ParallelLayout.build(1, [3, 2], [4, 0])
    with pytest.raises(LayoutError, match="6 LLM layers, target 4 / 5"):
        a.same_model(b)
