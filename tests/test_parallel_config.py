"""Parallel configuration validation: the layouts MindSpeed-MM's README calls invalid fail with
messages naming the numbers; the shipped script layouts pass."""
import copy
import json
import os
import re

import pytest

from mindspeed_ms.config.model_config import load_model_json, model_config_from_dict
from mindspeed_ms.parallel.config import (ParallelConfigError, check_backend_supports,
                                          validate_parallel_config)

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def mm_json(size):
    with open(os.path.join(EX, f"model_{size}.json")) as f:
        return json.load(f)


def cfg_with(size, vit=None, llm=None, **text):
    d = copy.deepcopy(mm_json(size))
    if vit is not None:
        d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = vit
    if llm is not None:
        d["text_decoder"]["pipeline_num_layers"] = llm
    d["text_decoder"].update(text)
    return model_config_from_dict(d)


def test_script_layouts_are_valid():
    c2 = validate_parallel_config({"global_batch_size": 24 * 8}, load_model_json(os.path.join(EX, "model_2b.json")), 8)
    assert (c2.dp, c2.tp, c2.pp) == (8, 1, 1) and c2.num_micro_batches == 24
    c7 = validate_parallel_config({"pipeline_model_parallel_size": 4, "global_batch_size": 96 * 2},
                                  load_model_json(os.path.join(EX, "model_7b.json")), 8)
    assert c7.dp == 2 and c7.num_micro_batches == 96
    assert [list(pl.llm_layers) for pl in c7.layout.placements] == [[0], list(range(1, 11)), list(range(11, 21)),
                                                                    list(range(21, 28))]
    assert [len(pl.vit_layers) for pl in c7.layout.placements] == [32, 0, 0, 0]
    assert c7.layout.placements[0].embedding and c7.layout.placements[0].projector
    assert c7.layout.placements[3].output_layer and not c7.layout.placements[2].output_layer
    c72 = validate_parallel_config({"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 8,
                                    "global_batch_size": 32}, load_model_json(os.path.join(EX, "model_72b.json")), 32)
    assert c72.dp == 2
    # model_72b.json carries full / uniform / 1 recompute for the text decoder
    assert c72.text_recompute.granularity == "full" and c72.text_recompute.method == "uniform"


def test_readme_vit_after_llm_is_invalid():
    cfg = cfg_with("7b", vit=[30, 2, 0, 0], llm=[1, 10, 10, 7])
    with pytest.raises(ParallelConfigError, match=r"only 30 of 32 vision layers.*all vision layers must be placed "
                                                  r"before any text-decoder layer"):
        validate_parallel_config({"pipeline_model_parallel_size": 4}, cfg, 8)


def test_frozen_only_stage_needs_dummy_optimizer():
    cfg = cfg_with("7b", vit=[30, 2, 0, 0], llm=[0, 11, 10, 7])   # README: vision frozen -> stage 0 frozen
    with pytest.raises(ParallelConfigError, match=r"stage\(s\) 0 hold only frozen parameters.*--enable-dummy-optimizer"):
        validate_parallel_config({"pipeline_model_parallel_size": 4}, cfg, 8)
    ok = validate_parallel_config({"pipeline_model_parallel_size": 4, "enable_dummy_optimizer": True}, cfg, 8)
    assert ok.frozen_stages == [0]
    assert ok.layout.placements[1].projector and ok.layout.placements[1].embedding


def test_tp_must_divide_kv_heads():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))            # 4 kv groups
    with pytest.raises(ParallelConfigError, match=r"num_query_groups \(kv heads\) 4 is not divisible by tp 8"):
        validate_parallel_config({"tensor_model_parallel_size": 8, "pipeline_model_parallel_size": 1}, cfg_with(
            "7b", vit=[32], llm=[28]), 8)
    with pytest.raises(ParallelConfigError, match=r"num_attention_heads 28 is not divisible by tp 2 x cp 4 = 8"):
        validate_parallel_config({"tensor_model_parallel_size": 2, "context_parallel_size": 4,
                                  "pipeline_model_parallel_size": 1}, cfg_with("7b", vit=[32], llm=[28]), 8)
    assert cfg.text.num_query_groups == 4


def test_world_size_mismatch():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    with pytest.raises(ParallelConfigError, match=r"world size 6 is not divisible by tp 1 x pp 4 x cp 1 = 4"):
        validate_parallel_config({"pipeline_model_parallel_size": 4}, cfg, 6)


def test_list_length_must_match_pp_and_vpp():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    with pytest.raises(ParallelConfigError, match=r"vision_encoder.pipeline_num_layers \[32, 0, 0, 0\] has 4 entries but the "
                                                  r"layout needs pp 2"):
        validate_parallel_config({"pipeline_model_parallel_size": 2}, cfg, 8)
    # flat pp*vpp form (mm_to_hf / resplit): chunk v of stage p is entry v*pp + p
    c = cfg_with("7b", vit=[32, 0, 0, 0, 0, 0, 0, 0], llm=[1, 4, 4, 4, 4, 4, 4, 3])
    v = validate_parallel_config({"pipeline_model_parallel_size": 4, "virtual_pipeline_model_parallel_size": 2,
                                  "global_batch_size": 8}, c, 8)
    assert v.layout.llm_chunks == [[1, 4, 4, 4], [4, 4, 4, 3]]
    st0 = v.layout.stage_placements(0)
    assert [list(p.llm_layers) for p in st0] == [[0], [13, 14, 15, 16]]
    assert v.layout.placements[-1].stage == 3 and v.layout.placements[-1].output_layer
    with pytest.raises(ParallelConfigError, match=r"needs the number of micro-batches \(6\) to be a multiple of "
                                                  r"--pipeline-model-parallel-size 4"):
        validate_parallel_config({"pipeline_model_parallel_size": 4, "virtual_pipeline_model_parallel_size": 2,
                                  "global_batch_size": 12}, c, 8)


def test_pipeline_with_fewer_micro_batches_than_stages_is_padded():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    c = validate_parallel_config({"pipeline_model_parallel_size": 4, "global_batch_size": 4}, cfg, 8)
    assert (c.num_micro_batches, c.pipeline_micro_batches) == (2, 4)
    assert any(re.search(r"2 micro-batch\(es\) per step.*fewer than the 4 pipeline stages.*2 empty", n)
               for n in c.notices)


def test_empty_stage_rejected():
    cfg = cfg_with("7b", vit=[32, 0, 0, 0], llm=[1, 0, 20, 7])
    with pytest.raises(ParallelConfigError, match=r"leave pipeline stage 1 without any layer"):
        validate_parallel_config({"pipeline_model_parallel_size": 4}, cfg, 8)


def test_recompute_flags_and_model_json_keys():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    c = validate_parallel_config({"pipeline_model_parallel_size": 4, "recompute_granularity": "full",
                                  "recompute_method": "block", "recompute_num_layers": 2}, cfg, 8)
    assert c.text_recompute.recomputed_layers(range(1, 11)) == [1, 2]
    with pytest.raises(ParallelConfigError, match=r"needs recompute_method in \('uniform', 'block'\)"):
        validate_parallel_config({"pipeline_model_parallel_size": 4, "recompute_granularity": "full"}, cfg, 8)


def test_cpu_backend_stops_model_parallel_before_compute():
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    c = validate_parallel_config({"pipeline_model_parallel_size": 4}, cfg, 8)
    with pytest.raises(ParallelConfigError, match=r"semi-auto parallel, which only runs on Ascend.*Invalid backend: CPU"):
        check_backend_supports(c, "CPU")
    assert check_backend_supports(c, "Ascend") == []
    dp = validate_parallel_config({"use_distributed_optimizer": True}, cfg_with("7b", vit=[32], llm=[28]), 2)
    notes = check_backend_supports(dp, "CPU")        # data parallel runs on CPU
    assert len(notes) == 1 and "full optimizer states" in notes[0]


def test_sequence_parallel_and_unaligned_cp_padding():
    cfg = cfg_with("7b", vit=[32], llm=[28])
    c = validate_parallel_config({"tensor_model_parallel_size": 2, "context_parallel_size": 2,
                                  "sequence_parallel": True, "seq_length": 1001}, cfg, 8)
    assert c.seq_split == 4 and c.padded_seq_length(1001) == 1004
    assert any("padded to a multiple of 4" in n for n in c.notices)
    off = validate_parallel_config({"sequence_parallel": True}, cfg, 8)
    assert not off.sequence_parallel and "no effect" in off.notices[0]
