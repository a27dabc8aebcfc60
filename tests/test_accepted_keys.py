"""Every flag and data.json key we accept either is read by the code or prints a one-line start-up
notice saying it has no effect here and why (nothing accepted is ignored silently).

"Read" is checked in the source: a flag is read where some module of the package takes it off the
parsed arguments (`args.NAME`, `getattr(args, "NAME")`, `_get(args, "NAME")`); a data.json key where
a module other than data_config.py reads the attribute (or a data_config property that another
module uses). A flag that only describes the model is checked against model.json (an error or a
notice when they differ), tested by giving each a differing value."""
import ast
import dataclasses
import json
import os
import shlex

import pytest

from mindspeed_ms.arguments import ASCEND, MODEL, NOOP, USED, ArgumentError, TrainingArgs, parse_args, validate_args
from mindspeed_ms.config import data_config as dc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EX = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")
TINY = os.path.join(EX, "model_tiny.json")

# issue 20's keys (background loading, packing) are read now; nothing is left out
LEFT_TO_H20 = {"flag": set(), "key": set()}


def _sources():
    out = []
    for root, _, files in os.walk(os.path.join(ROOT, "mindspeed_ms")):
        out += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return out + [os.path.join(ROOT, "pretrain_vlm.py"), os.path.join(ROOT, "posttrain_qwen2vl_dpo.py")]


def _flags_read():
    read = set()
    for path in _sources():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value).endswith("args"):
                read.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_get", "getattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and ast.unparse(node.args[0]).endswith("args")):
                read.add(node.args[1].value)
    return read


def _keys_read():
    """Attribute names read outside data_config.py, plus those read by its properties used elsewhere."""
    outside, props = set(), {}
    cfg_file = os.path.abspath(dc.__file__)
    for path in _sources():
        tree = ast.parse(open(path).read())
        if os.path.abspath(path) == cfg_file:
            for fn in ast.walk(tree):
                if isinstance(fn, ast.FunctionDef) and any(ast.unparse(d) == "property" for d in fn.decorator_list):
                    props[fn.name] = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
            continue
        outside |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for name, attrs in props.items():
        if name in outside:
            outside |= attrs
    return outside


def _flag_fields():
    return [f for f in dataclasses.fields(TrainingArgs) if not f.metadata.get("derived")]


def _data_keys():
    """Every dotted key data.json accepts."""
    sections = [("dataset_param.preprocess_parameters", dc.PreprocessParameters),
                ("dataset_param.basic_parameters", dc.BasicParameters), ("dataset_param.attr", dc.DatasetAttr),
                ("dataloader_param", dc.DataloaderParam), ("dataloader_param.collate_param", dc.CollateParam)]
    out = [("dataset_param.dataset_type", "dataset_type")]
    for prefix, cls in sections:
        out += [(f"{prefix}.{f.name}", f.name) for f in dataclasses.fields(cls) if f.name != "collate_param"]
    return out


def _non_default(f):
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    choices = f.metadata.get("choices")
    if f.type in ("bool", bool):
        return None                                  # store_true: the flag alone
    if choices:
        other = [c for c in choices if c != default]
        return other[0] if other else None
    if "int" in str(f.type):
        return "3" if default != 3 else "5"
    return "x.json" if f.name.startswith("mm_") else "something"


def _validate(tmp_path, extra, backend="CPU"):
    args = parse_args(shlex.split(f"--mm-model {TINY} --seq-length 64 --lr 1e-4 --train-iters 1 {extra}"))
    return validate_args(args, 1, backend, require_data=False)


def test_every_flag_is_read_or_noticed(tmp_path):
    read = _flags_read()
    unread = []
    for f in _flag_fields():
        effect, name = f.metadata["effect"], f.name
        flag = "--" + name.replace("_", "-")
        if name in LEFT_TO_H20["flag"]:
            continue
        if effect in (USED, ASCEND):
            choices = f.metadata.get("choices")
            if name not in read and not (choices and len(choices) == 1):   # one allowed value: the parser's check
                unread.append(flag)
        if effect in (NOOP, ASCEND):
            value = _non_default(f)
            given = flag if value is None else f"{flag} {value}"
            if name.startswith("recompute_"):       # the three go together
                given = "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
            if name == "mm_tool":
                (tmp_path / "tools.json").write_text("{}")
                given = f"{flag} {tmp_path}/tools.json"
            backends = ("CPU", "Ascend") if effect == NOOP else ("CPU",)
            for backend in backends:
                st = _validate(tmp_path, given, backend)
                mine = [n for n in st.notices if n.startswith(f"{flag}: no effect on {backend} (")]
                assert len(mine) == 1 and "\n" not in mine[0], (flag, backend, st.notices)
    assert not unread, f"accepted but never read and no notice: {unread}"


@pytest.mark.parametrize("f", [f for f in _flag_fields() if f.metadata["effect"] == MODEL], ids=lambda f: f.name)
def test_model_structure_flags_are_checked_against_model_json(tmp_path, f):
    """A value that differs from model.json stops the run or gives a notice; a boolean flag (which
    can only agree with the Qwen2-VL structure or name a mismatch) is read by the check."""
    flag = "--" + f.name.replace("_", "-")
    wrong = {"vocab_size": "999", "num_layers": "9", "hidden_size": "96", "ffn_hidden_size": "96",
             "num_attention_heads": "8", "num_query_groups": "1", "max_position_embeddings": "77",
             "make_vocab_size_divisible_by": "1", "normalization": "LayerNorm"}
    if f.name not in wrong:
        assert f.type in ("bool", bool) and f.name in _flags_read()
        return
    try:
        st = _validate(tmp_path, f"{flag} {wrong[f.name]}")
    except ArgumentError as e:
        assert flag in str(e)
        return
    assert any(n.startswith(flag) for n in st.notices), (flag, st.notices)


def _with(obj, dotted, value):
    parts = dotted.split(".")
    d = obj
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _example_value(key):
    special = {"dataloader_param.dataloader_mode": "base", "dataset_param.attr.audios": "audios",
               "dataset_param.basic_parameters.tool_format": "qwen"}
    if key in special:
        return special[key]
    return True


def test_every_data_key_is_read_or_noticed(tmp_path):
    read = _keys_read()
    base = json.load(open(os.path.join(EX, "data_tiny.json")))
    unread = []
    for key, attr in _data_keys():
        if key in LEFT_TO_H20["key"]:
            continue
        if key in dc.NO_EFFECT_KEYS:
            data = json.loads(json.dumps(base))
            value = _example_value(key)
            if key.endswith("_resolution"):          # noticed beside the *_max_pixels it gives way to
                kind = key.rsplit(".", 1)[1].split("_")[0]
                _with(data, f"dataset_param.preprocess_parameters.{kind}_max_pixels", 128 * 128)
                value = 64 * 64
            elif key.endswith(("batch_size", "seed", "audio_sampling_rate", "num_workers")):
                value = 4
            _with(data, key, value)
            path = tmp_path / "d.json"
            path.write_text(json.dumps(data))
            notes = [n for n in dc.no_effect_notices(dc.load_data_json(str(path))) if f": {key} = " in n]
            assert len(notes) == 1 and "has no effect here (" in notes[0] and "\n" not in notes[0], key
        elif key == "dataset_param.dataset_type":       # one accepted value, checked
            data = json.loads(json.dumps(base))
            _with(data, key, "t2v")
            with pytest.raises(dc.DataConfigError, match="dataset_type 't2v'"):
                dc.parse_data_config(data, "d.json")
        elif attr not in read:
            unread.append(key)
    assert not unread, f"accepted but never read and no notice: {unread}"


def test_released_data_files_say_what_they_set_that_does_nothing(tmp_path):
    path = os.path.join(ROOT, "tests", "fixtures", "mindspeed_mm_configs", "v2.0.0", "data_7b.json")
    cfg = dc.load_data_json(path)
    notes = dc.no_effect_notices(cfg)
    assert any("dataloader_param.pin_memory = true has no effect" in n for n in notes)
    # 2.0.0's image_resolution is its pixel cap: read as image_max_pixels (no notice for it)
    raw = json.load(open(path))["dataset_param"]["preprocess_parameters"]
    assert cfg.preprocess_parameters.image_max_pixels == raw["image_resolution"]
    assert cfg.preprocess_parameters.video_max_pixels == raw["video_resolution"]
    assert not any("_resolution" in n for n in notes)


def test_start_up_prints_the_data_notices(tmp_path):
    data = json.load(open(os.path.join(EX, "data_tiny.json")))
    data["dataloader_param"]["group_by_length"] = True
    (tmp_path / "d.json").write_text(json.dumps(data))
    args = parse_args(shlex.split(f"--mm-data {tmp_path}/d.json --mm-model {TINY} --seq-length 64 --lr 1e-4 "
                                  f"--train-iters 1"))
    st = validate_args(args, 1, "CPU")
    assert any("dataloader_param.group_by_length = true has no effect here" in n for n in st.notices)
    data["dataloader_param"]["dataloader_mode"] = "loader"
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(dc.DataConfigError, match=r"dataloader_mode 'loader'"):
        dc.load_data_json(str(tmp_path / "d.json"))
