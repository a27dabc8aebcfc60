"""model.json `pipeline_num_layers`: MindSpeed-MM's nested VPP form ([[..pp..], [..pp..]]) loads as
well as the flat one, both validated against num_layers by the parallel package's normaliser."""
import copy
import json
import os

import pytest

from mindspeed_ms.config.model_config import ModelConfigError, load_model_json, model_config_from_dict
from mindspeed_ms.parallel.config import validate_parallel_config

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def model_7b(vit, llm):
    with open(os.path.join(EX, "model_7b.json")) as f:
        d = copy.deepcopy(json.load(f))
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = vit
    d["text_decoder"]["pipeline_num_layers"] = llm
    return d


def test_nested_vpp_form_loads_and_places_the_same_layers_as_flat(tmp_path):
    nested = model_7b([[32, 0, 0, 0], [0, 0, 0, 0]], [[1, 4, 4, 4], [4, 4, 4, 3]])
    path = tmp_path / "model.json"
    path.write_text(json.dumps(nested))
    cfg = load_model_json(str(path))
    assert cfg.text.pipeline_num_layers == [[1, 4, 4, 4], [4, 4, 4, 3]]
    # written back unchanged
    assert cfg.to_model_json_dict()["text_decoder"]["pipeline_num_layers"] == [[1, 4, 4, 4], [4, 4, 4, 3]]
    flat = model_config_from_dict(model_7b([32, 0, 0, 0, 0, 0, 0, 0], [1, 4, 4, 4, 4, 4, 4, 3]))
    args = {"pipeline_model_parallel_size": 4, "virtual_pipeline_model_parallel_size": 2, "global_batch_size": 8}
    a = validate_parallel_config(args, cfg, 8).layout
    b = validate_parallel_config(args, flat, 8).layout
    assert [(p.stage, p.chunk, p.llm_layers, p.vit_layers) for p in a.placements] == \
        [(p.stage, p.chunk, p.llm_layers, p.vit_layers) for p in b.placements]
    assert [list(p.llm_layers) for p in a.stage_placements(0)] == [[0], [13, 14, 15, 16]]


@pytest.mark.parametrize("llm, match", [
    ([[1, 4, 4, 4], [4, 4, 4, 2]], r"places 27 layers but num_layers is 28.*sum to num_layers \(28\)"),
    ([[1, 4, 4, 4], [4, 4, 11]], r"chunk 1 \[4, 4, 11\] has 3 entries"),
    ([[1, 4, 4, 4], 15], r"mixes numbers and lists"),
    ([[1, 4, 4, 4], [4, 4, -1, 12]], r"non-negative integers, found -1"),
    ([1, 10, 10, 6], r"places 27 layers"),
])
def test_bad_pipeline_num_layers_names_file_and_key(tmp_path, llm, match):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model_7b([32, 0, 0, 0], llm)))
    with pytest.raises(ModelConfigError, match=r"m\.json: key 'text_decoder\.pipeline_num_layers'.*" + match):
        load_model_json(str(path))


def test_nested_vision_form_is_checked_too():
    with pytest.raises(ModelConfigError, match=r"vision_encoder\.pipeline_num_layers.*places 31 layers"):
        model_config_from_dict(model_7b([[31, 0, 0, 0], [0, 0, 0, 0]], [[1, 4, 4, 4], [4, 4, 4, 3]]))
