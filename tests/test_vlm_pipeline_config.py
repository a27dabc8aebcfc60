"""MindSpeed-MM's inference / evaluate JSON files (v2.0.0 and v26.0.0, only paths changed) and the
Megatron flags of its scripts are accepted; wrong values stop before any compute with the reason."""
import json
import os
import shlex

import pytest

from mindspeed_ms.arguments import ArgumentError
from mindspeed_ms.inference.mm_pipeline_config import PipelineConfigError, read_pipeline_json
from mindspeed_ms.inference.vlm_cli import startup

from helpers.mm_eval import SHIPPED

NAMES = sorted(n for n in os.listdir(SHIPPED) if n.endswith(".json"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    tok = root / "tok"
    tok.mkdir()
    (root / "demo.jpeg").write_bytes(b"")
    (root / "AI2D_TEST.tsv").write_text("index\timage\tquestion\tanswer\n")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("release")
    return root


def _paths_changed(env, name, **extra):
    with open(os.path.join(SHIPPED, name), encoding="utf-8") as f:
        d = json.load(f)
    d["tokenizer"]["from_pretrained"] = str(env / "tok")
    if "image_path" in d:
        d["image_path"] = str(env / "demo.jpeg")
    if "dataset_path" in d:
        d["dataset_path"], d["result_output_path"] = str(env / "AI2D_TEST.tsv"), str(env / "out")
    d.update(extra)
    out = env / f"changed_{name}"
    out.write_text(json.dumps(d))
    return str(out), d


@pytest.mark.parametrize("name", NAMES)
def test_shipped_files_are_read(env, name):
    path, d = _paths_changed(env, name)
    cfg = read_pipeline_json(path, "evaluation" if "evaluate" in name else "inference")
    assert cfg.model.text.hidden_size == d["text_decoder"]["hidden_size"]
    assert cfg.model.text.num_layers == d["text_decoder"]["num_layers"]
    assert cfg.model.vision.num_layers == 32
    g = cfg.generation
    assert (g.temperature, g.top_k, g.top_p, g.max_new_tokens) == (0.01, 1, 0.001, 256)
    assert g.do_sample and g.eos_token_id == [151645, 151643] and g.pad_token_id == 151643
    assert g.repetition_penalty == d["generation_config"]["repetition_penalty"]
    assert any("dtype bf16" in n for n in cfg.notices)
    if "evaluate" in name:
        assert (cfg.evaluation_dataset, cfg.evaluation_model) == ("ai2d_test", "qwen2_vl_7b")
        assert (cfg.min_pixels, cfg.max_pixels) == (1003520, 12845056)
    else:
        assert cfg.prompts == "Describe this image and keep it within 100 words."


def test_example_files_equal_the_shipped_ones_but_paths():
    for name in ("inference_qwen2vl_2b.json", "inference_qwen2vl_7b.json", "inference_qwen2vl_72b.json",
                 "evaluate_qwen2vl_7b.json"):
        with open(os.path.join(SHIPPED, name), encoding="utf-8") as f:
            shipped = json.load(f)
        with open(os.path.join(REPO, "examples", "mindspore", "qwen2vl", name), encoding="utf-8") as f:
            ours = json.load(f)
        shipped.pop("image_path", None), ours.pop("image_path", None)
        assert ours == shipped


@pytest.mark.parametrize("edit,match", [
    ({"pipeline_class": "InternVLPipeline"}, "this framework runs Qwen2VlPipeline"),
    ({"beam_me_up": 1}, "unknown key 'beam_me_up'"),
    ({"tokenizer": {"hub_backend": "hf", "from_pretrained": "/nonexistent"}}, "tokenizer.from_pretrained"),
    ({"generation_config": {"num_beams": 4}}, "beam search is not implemented"),
    ({"generation_config": {"temprature": 0.5}}, "unknown key 'generation_config.temprature'"),
    ({"generation_config": {"image_token_id": 5}}, "generation_config.image_token_id = 5"),
    ({"dtype": "int8"}, "dtype 'int8'"),
])
def test_bad_inference_json(env, edit, match):
    path, _ = _paths_changed(env, "inference_qwen2vl_7b.json", **edit)
    with pytest.raises(PipelineConfigError, match=match):
        read_pipeline_json(path, "inference")


@pytest.mark.parametrize("edit,match", [
    ({"evaluation_dataset": "mmbench"}, "evaluation_dataset 'mmbench'"),
    ({"evaluation_model": "internvl2_8b"}, "evaluation_model 'internvl2_8b'"),
    ({"dataset_path": "/nonexistent/AI2D_TEST.tsv"}, "dataset_path /nonexistent"),
])
def test_bad_evaluate_json(env, edit, match):
    path, _ = _paths_changed(env, "evaluate_qwen2vl_7b.json", **edit)
    with pytest.raises(PipelineConfigError, match=match):
        read_pipeline_json(path, "evaluation")


def _script_flags(script, **subst):
    """The flags a shipped script passes (its GPT_ARGS / MM_ARGS / OUTPUT_ARGS), variables filled."""
    text = open(os.path.join(REPO, "examples", "mindspore", "qwen2vl", script), encoding="utf-8").read()
    out = []
    for block in ("GPT_ARGS", "MM_ARGS", "OUTPUT_ARGS"):
        body = text.split(f'{block}="', 1)[1].split('"', 1)[0]
        for k, v in subst.items():
            body = body.replace("${" + k + "}", str(v)).replace("$" + k, str(v))
        out += shlex.split(body.replace("\\\n", " "))
    return out + ["--distributed-backend", "nccl", "--ai-framework", "mindspore"]


def test_script_flags_accepted_with_notices(env):
    path, _ = _paths_changed(env, "evaluate_qwen2vl_7b.json")
    flags = _script_flags("evaluate_qwen2vl_7b.sh", TP=1, PP=1, MBS=1, GBS=1, LOAD_PATH=env / "ckpt", MM_MODEL=path)
    assert flags.count("--vocab-size") == 2          # 152064 then 1, as MindSpeed-MM's script has it
    args, cfg, backend, notices = startup(flags, "evaluate_vlm.py", "evaluation")
    text = "\n".join(notices)
    assert "--vocab-size 1: the vocabulary is the JSON's text_decoder.vocab_size (152064)" in text
    for flag in ("--use-flash-attn", "--seq-length", "--eval-iters", "--global-batch-size"):
        assert flag in text
    assert args.seed == 42 and args.micro_batch_size == 1


@pytest.mark.parametrize("script,tp,pp", [("inference_qwen2vl_72b.sh", 1, 8), ("inference_qwen2vl_7b.sh", 2, 1)])
def test_parallel_generation_refused_on_cpu(env, script, tp, pp):
    path, _ = _paths_changed(env, script.replace(".sh", ".json"))
    flags = _script_flags(script, TP=tp, PP=pp, MBS=1, GBS=1, LOAD_PATH=env / "ckpt", MM_MODEL=path)
    with pytest.raises(ArgumentError, match="Invalid backend: CPU"):
        startup(flags, "inference_vlm.py", "inference")


def test_unknown_flag_is_an_error(env):
    path, _ = _paths_changed(env, "inference_qwen2vl_7b.json")
    with pytest.raises(ArgumentError, match="unknown flag"):
        startup(["--mm-model", path, "--load", str(env / "ckpt"), "--top-p", "0.5"], "inference_vlm.py", "inference")


def test_load_must_be_a_mindspeed_mm_checkpoint(env, tmp_path):
    from mindspeed_ms.inference.mm_pipeline import load_mm_model

    path, _ = _paths_changed(env, "inference_qwen2vl_7b.json")
    cfg = read_pipeline_json(path, "inference")
    with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt is missing"):
        load_mm_model(str(tmp_path), cfg.model)
    with pytest.raises(ValueError, match="no such directory"):
        load_mm_model(str(tmp_path / "nope"), cfg.model)
