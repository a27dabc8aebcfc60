"""Datasets from data.json: config validation, formats, mixed media, bad input, cache, streaming, validation split."""
import json
import logging
import os

import numpy as np
import pytest

from helpers.images import write_gif, write_image
from mindspeed_ms.config.data_config import DataConfigError, load_data_json, parse_data_config
from mindspeed_ms.data.dataset import DataError, build_datasets
from mindspeed_ms.tools.build_tokenizer import build_tokenizer

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")
MM_ATTR = {"images": "images", "videos": "videos", "messages": "messages", "role_tag": "role",
           "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "observation_tag": None,
           "function_tag": None, "system_tag": None, "system": None}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def media(tmp_path):
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    write_image(str(d / "img" / "a.png"), 64, 48, seed=1)
    write_image(str(d / "img" / "b.jpg"), 100, 80, seed=2, fmt="JPEG")
    write_image(str(d / "img" / "c.png"), 30, 30, seed=3, mode="RGBA")
    write_gif(str(d / "img" / "v.gif"), 6)
    return d


def conv(q, a, images=None, videos=None):
    s = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    if images is not None:
        s["images"] = images
    if videos is not None:
        s["videos"] = videos
    return s


MIXED = [conv("<image>What is it?", "A shape.", ["img/a.png"]), conv("Hi there", "Hello!"),
         conv("<image> vs <image>", "Different.", ["img/b.jpg", "img/c.png"]),
         conv("<video>What moves?", "Squares.", videos=["img/v.gif"]),
         {"messages": [{"role": "user", "content": "<image>a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
          "images": ["img/a.png"]}]


def make_cfg(tok_dir, data_dir, dataset, **basic):
    b = {"template": "qwen2vl", "dataset_dir": str(data_dir), "dataset": dataset, **basic}
    return parse_data_config({"dataset_param": {"dataset_type": "huggingface",
                                                "preprocess_parameters": {"model_name_or_path": tok_dir,
                                                                          "image_max_pixels": 128 * 128},
                                                "basic_parameters": b, "attr": dict(MM_ATTR)},
                              "dataloader_param": {"collate_param": {"model_name": "qwen2vl"}}}, "test_data.json")


def write(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return str(path)


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_example_json_files_validate():
    for name in ("data_2b.json", "data_7b.json", "data_72b.json", "data_72b_video.json", "data_72b_dpo.json"):
        cfg = load_data_json(os.path.join(EXAMPLES, name))
        assert cfg.basic_parameters.template == "qwen2vl"
    assert load_data_json(os.path.join(EXAMPLES, "data_72b_dpo.json")).attr.ranking
    assert load_data_json(os.path.join(EXAMPLES, "data_72b_video.json")).attr.videos == "videos"


def test_config_errors(tmp_path):
    base = json.load(open(os.path.join(EXAMPLES, "data_7b.json")))
    bad = json.loads(json.dumps(base))
    bad["dataset_param"]["basic_parameters"]["cutoff_len"] = 2048
    with pytest.raises(DataConfigError, match=r"bad\.json.*cutoff_len.*--seq-length"):
        load_data_json(write(tmp_path / "bad.json", bad))
    for section, key in (("basic_parameters", "datset"), ("attr", "imagez"), ("preprocess_parameters", "max_pix")):
        bad = json.loads(json.dumps(base))
        bad["dataset_param"][section][key] = 1
        with pytest.raises(DataConfigError, match=f"u.json: dataset_param.{section}: unknown key '{key}'"):
            load_data_json(write(tmp_path / "u.json", bad))
    bad = json.loads(json.dumps(base))
    bad["dataloader_param"]["collate_param"]["modelname"] = "x"
    with pytest.raises(DataConfigError, match="collate_param: unknown key 'modelname'"):
        load_data_json(write(tmp_path / "c.json", bad))
    bad = json.loads(json.dumps(base))
    bad["dataset_param"]["basic_parameters"]["train_on_prompt"] = "yes"
    with pytest.raises(DataConfigError, match="train_on_prompt: expected bool"):
        load_data_json(write(tmp_path / "t.json", bad))
    for key, value in (("image_max_pixels", 0), ("video_min_pixels", 10 ** 9)):
        bad = json.loads(json.dumps(base))
        bad["dataset_param"]["preprocess_parameters"][key] = value
        with pytest.raises(DataConfigError, match=f"p.json.*{key.split('_')[0]}_min_pixels .*need 0 <="):
            load_data_json(write(tmp_path / "p.json", bad))
    (tmp_path / "trunc.json").write_text(json.dumps(base)[:-20])
    with pytest.raises(DataConfigError, match="trunc.json: not valid JSON"):
        load_data_json(str(tmp_path / "trunc.json"))


def test_mixed_dataset(tok_dir, media):
    path = write(media / "mixed.json", MIXED)
    train, val = build_datasets(make_cfg(tok_dir, media, path), seq_length=512)
    assert val is None and len(train) == 5
    s0, s1, s2, s3 = train[0], train[1], train[2], train[3]
    assert s0["image_grid_thw"].shape == (1, 3) and "pixel_values" not in s1
    assert s2["image_grid_thw"].shape == (2, 3) and s3["video_grid_thw"].shape == (1, 3)
    for s in (s0, s2, s3):
        grid = np.concatenate([s.get("image_grid_thw", np.zeros((0, 3), int)), s.get("video_grid_thw", np.zeros((0, 3), int))])
        n_pad = int(np.isin(s["input_ids"], [151655, 151656]).sum())
        assert n_pad == int(grid.prod(axis=1).sum()) // 4
    assert s0["labels"].shape == s0["input_ids"].shape


def test_alpaca_and_comma_list_and_max_samples(tok_dir, media, tmp_path):
    a = write(tmp_path / "a.json", MIXED[:2])
    b = write(tmp_path / "b.json", MIXED[2:])
    train, _ = build_datasets(make_cfg(tok_dir, media, f"{a},{b}"), 256)
    assert len(train) == 5
    alp = write(tmp_path / "alp.json", [{"instruction": "Add", "input": "1 and 2", "output": "3"}] * 3)
    with pytest.raises(DataError, match=r"alp\.json: sample 0: column 'messages'.*attr\.messages"):
        build_datasets(make_cfg(tok_dir, media, f"{a},{alp}"), 256)  # one attr mapping for all files
    cfg2 = make_cfg(tok_dir, media, a, max_samples=1)
    assert len(build_datasets(cfg2, 256)[0]) == 1
    # alpaca through its own attr formatting
    cfg3 = parse_data_config({"dataset_param": {"preprocess_parameters": {"model_name_or_path": tok_dir},
                                                "basic_parameters": {"dataset": alp}, "attr": {"formatting": "alpaca"}},
                              "dataloader_param": {}})
    s = build_datasets(cfg3, 256)[0][0]
    from transformers import AutoTokenizer
    text = AutoTokenizer.from_pretrained(tok_dir).decode(s["input_ids"])
    assert "<|im_start|>user\nAdd\n1 and 2<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n" in text


def test_skips_are_counted(tok_dir, media, caplog):
    data = MIXED[:2] + [
        {"messages": [{"role": "user", "content": "odd"}]},
        {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        conv("<image>huge", "x", ["img/b.jpg"]),
    ]
    path = write(media / "skips.json", data)
    with caplog.at_level(logging.WARNING):
        train, _ = build_datasets(make_cfg(tok_dir, media, path), seq_length=40)
    # sample 5 (b.jpg: 12 merged tokens + 2) fits 40 tokens once its text is cut, so it is kept
    assert train.skipped == 3 and len(train) == 3
    # the length samplers' lengths: the token rows (image tokens included) of the kept samples
    np.testing.assert_array_equal(train.lengths(), [len(r["input_ids"]) for r in train.rows])
    msg = caplog.text
    assert "skipped 3 sample(s)" in msg and "skips.json sample 2" in msg and "skips.json sample 3" in msg
    with caplog.at_level(logging.WARNING):
        train, _ = build_datasets(make_cfg(tok_dir, media, path), seq_length=8)
    assert "exceed the sequence length 8" in caplog.text


@pytest.mark.parametrize("sample,pattern", [
    (conv("<image>x", "y", ["img/missing.png"]),
     r"bad\.json: sample 1: image file .img/missing.png. not found: neither \S*img/missing.png "
     r"\(under basic_parameters.dataset_dir"),
    (conv("<image>x", "y", ["img/corrupt.jpg"]), r"bad\.json: sample 1: cannot read image .*corrupt.jpg"),
    (conv("<image><image>x", "y", ["img/a.png"]), r"bad\.json: sample 1: 2 <image> tag\(s\) in the messages but 1 image"),
    (conv("x", "y", ["img/a.png"]), r"bad\.json: sample 1: 0 <image> tag\(s\) in the messages but 1 image"),
    (conv("<video>", "y", videos=["img/nope.mp4"]), r"bad\.json: sample 1: video file 'img/nope.mp4' not found"),
])
def test_bad_samples_raise_with_file_and_index(tok_dir, media, sample, pattern):
    (media / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    path = write(media / "bad.json", [MIXED[1], sample])
    with pytest.raises(DataError, match=pattern):
        build_datasets(make_cfg(tok_dir, media, path), 256)


def test_truncated_json_and_missing_file(tok_dir, media):
    p = media / "trunc.json"
    p.write_text(json.dumps(MIXED)[:-30])
    with pytest.raises(DataError, match=r"trunc\.json: cannot read the dataset as JSON"):
        build_datasets(make_cfg(tok_dir, media, str(p)), 256)
    with pytest.raises(DataError, match=r"dataset file not found: .*nothere\.json"):
        build_datasets(make_cfg(tok_dir, media, str(media / "nothere.json")), 256)


def test_cache_reuse_and_invalidation(tok_dir, media, tmp_path):
    path = write(media / "c.json", MIXED)
    cache = str(tmp_path / "cache")
    cfg = make_cfg(tok_dir, media, path, cache_dir=cache)
    plain = build_datasets(make_cfg(tok_dir, media, path), 512)[0]
    first = build_datasets(cfg, 512)[0]
    files = sorted(f for f in os.listdir(cache) if f.startswith("mindspeed_ms_"))
    assert files
    again = build_datasets(cfg, 512)[0]
    assert sorted(f for f in os.listdir(cache) if f.startswith("mindspeed_ms_")) == files  # reused, nothing new
    for i in range(len(plain)):
        _same(plain[i], first[i])
        _same(plain[i], again[i])
    write(path, MIXED[:3])  # data changed -> new cache entry and new content
    assert len(build_datasets(cfg, 512)[0]) == 3
    build_datasets(cfg, 256)  # seq-length changed -> new entry too
    assert len([f for f in os.listdir(cache) if f.startswith("mindspeed_ms_")]) > len(files)


def test_streaming_equals_plain(tok_dir, media):
    path = write(media / "s.json", MIXED + [{"messages": [{"role": "user", "content": "odd"}]}])
    plain = build_datasets(make_cfg(tok_dir, media, path), 512)[0]
    stream = build_datasets(make_cfg(tok_dir, media, path, streaming=True), 512)[0]
    items = list(stream)
    assert len(items) == len(plain) == 5 and stream.report.total == 1
    for i, s in enumerate(items):
        _same(s, plain[i])


def test_validation_sets(tok_dir, media, tmp_path):
    path = write(media / "t.json", MIXED * 4)
    vpath = write(media / "v.json", MIXED[:2])
    train, val = build_datasets(make_cfg(tok_dir, media, path, val_dataset=vpath, val_max_samples=1), 512)
    assert len(train) == 20 and len(val) == 1
    cfg = make_cfg(tok_dir, media, path, val_rate=0.25)
    train, val = build_datasets(cfg, 512, seed=7)
    assert len(train) == 15 and len(val) == 5
    train2, val2 = build_datasets(cfg, 512, seed=7)
    assert [r["input_ids"] for r in val.rows] == [r["input_ids"] for r in val2.rows]
    np.testing.assert_array_equal(train.lengths(), [len(r["input_ids"]) for r in train.rows])


def test_ranking_dataset(tok_dir, media):
    data = [{"messages": [{"role": "user", "content": "<image>Which?"}],
             "chosen": {"role": "assistant", "content": "The good one."},
             "rejected": {"role": "assistant", "content": "Bad."}, "images": ["img/a.png"]},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
             "chosen": {"role": "assistant", "content": "a"}, "rejected": {"role": "assistant", "content": "b"}}]
    path = write(media / "r.json", data)
    attr = dict(MM_ATTR, ranking=True, chosen="chosen", rejected="rejected")
    cfg = parse_data_config({"dataset_param": {"preprocess_parameters": {"model_name_or_path": tok_dir},
                                               "basic_parameters": {"dataset": path, "dataset_dir": str(media)},
                                               "attr": attr},
                             "dataloader_param": {"collate_param": {"model_name": "qwen2vl_dpo"}}})
    train, _ = build_datasets(cfg, 256)
    assert len(train) == 1 and train.skipped == 1  # even message count in a ranking sample
    s = train[0]
    assert {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "pixel_values"} <= set(s)
    assert train.lengths().tolist() == [max(len(s["chosen_input_ids"]), len(s["rejected_input_ids"]))]


def test_length_grouped_sampler_reaches_the_training_feed(tok_dir, media):
    """data.json's sampler_type: LengthGroupedSampler -> pretrain_vlm.py's feed orders each
    global batch longest first (one mega-batch per global batch for a set this small)."""
    from types import SimpleNamespace

    from mindspeed_ms.data.sampler import LengthGroupedOrder
    from mindspeed_ms.training.build import build_feed
    obj = {"dataset_param": {"dataset_type": "huggingface",
                             "preprocess_parameters": {"model_name_or_path": tok_dir, "image_max_pixels": 128 * 128},
                             "basic_parameters": {"template": "qwen2vl", "dataset_dir": str(media),
                                                  "dataset": write(media / "t.json", MIXED * 4)},
                             "attr": dict(MM_ATTR)},
           "dataloader_param": {"sampler_type": "LengthGroupedSampler", "collate_param": {"model_name": "qwen2vl"}}}
    args = SimpleNamespace(mm_data=write(media / "data.json", obj), seq_length=512, seed=5, micro_batch_size=2,
                           data_parallel_size=1, grad_acc_steps=2)
    feed = build_feed(args, None, 0)
    assert isinstance(feed.order, LengthGroupedOrder) and feed.order.step_size == 4
    lengths = build_datasets(load_data_json(args.mm_data), 512)[0].lengths()
    order = feed.order(0)
    assert sorted(order) == list(range(20)) and lengths.min() < lengths.max()
    for k in range(5):
        assert (np.diff(lengths[order[4 * k:4 * k + 4]]) <= 0).all()
