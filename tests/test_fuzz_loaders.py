"""Fuzz test: random mutations of valid data.json / model.json files and dataset rows. Every outcome
is success or our own error type with a message naming the problem; no other exception escapes.

Bounded time: ~1 s per target in the default suite (9 targets), 30 s per target with --runslow,
FUZZ_SECONDS=N to choose. A failure prints the seed and the mutated input, which reproduce it."""
import copy
import json
import os
import random
import time
import traceback

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")

ODD_VALUES = [None, True, False, 0, -1, 1, 2 ** 63, -2 ** 40, 0.5, -0.0, 1e308, float("nan"), "", "x", "0",
              "null", [], [1], [[1, 2], [3]], {}, {"a": 1}, "../../etc/passwd", "\u0000", "\ud800x"]


def odd(rng):
    return copy.deepcopy(rng.choice(ODD_VALUES))     # a fresh object: no sharing, no cycles between cases


def budget(request, seconds_default=1.0, seconds_slow=30.0):
    if os.environ.get("FUZZ_SECONDS"):
        return float(os.environ["FUZZ_SECONDS"])
    slow = request.config.getoption("--runslow") or os.environ.get("RUN_SLOW") == "1"
    return seconds_slow if slow else seconds_default


def _paths(obj, prefix=()):
    """Every (container path) in a JSON object, for choosing where to mutate."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _at(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def mutate(obj, rng):
    """One to three random structural mutations of a JSON value (a deep copy)."""
    obj = copy.deepcopy(obj)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(obj)
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.2:
                return odd(rng)
            continue
        parent, key = _at(obj, path[:-1]), path[-1]
        op = rng.random()
        if op < 0.3:
            parent[key] = odd(rng)                    # wrong type / out of range
        elif op < 0.5 and isinstance(parent, dict):
            del parent[key]                                          # missing key
        elif op < 0.6 and isinstance(parent, dict):
            parent[str(key) + rng.choice(["_", "s", "X"])] = parent.pop(key)   # misspelt key
        elif op < 0.75:
            v = parent[key]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                parent[key] = rng.choice([-v, v * 1000, v + 1, 0, -1, v / 3])   # numeric edge
            else:
                parent[key] = odd(rng)
        elif op < 0.85 and isinstance(parent, list):
            parent.insert(rng.randint(0, len(parent)), copy.deepcopy(rng.choice(parent) if parent else 1))
        else:
            parent[key] = {"nested": parent[key]} if rng.random() < 0.5 else [parent[key]]
    return obj


def mutate_text(text, rng):
    """Byte-level damage: truncation, a flipped byte, an inserted character."""
    b = bytearray(text.encode("utf-8"))
    op = rng.random()
    if op < 0.4:
        return bytes(b[:rng.randint(0, len(b))])
    i = rng.randrange(len(b))
    if op < 0.7:
        b[i] ^= 1 << rng.randrange(8)
    else:
        b[i:i] = rng.choice([b"{", b"]", b",", b'"', b"\xff", b"\\"])
    return bytes(b)


def fuzz(request, seed, make_input, run, allowed, where):
    rng = random.Random(seed)
    t_end = time.time() + budget(request)
    n = ok = 0
    while time.time() < t_end:
        n += 1
        case = make_input(rng)
        try:
            run(case)
            ok += 1
        except allowed as e:
            assert str(e).strip(), f"{where}: empty message for {type(e).__name__}, input {case!r:.2000}"
        except Exception:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{where}: seed {seed} case {n}: an exception that is not ours escaped for input "
                        f"{case!r:.3000}\n{traceback.format_exc()}")
    assert n >= 10, f"only {n} cases ran"
    return n, ok


def _write(tmp_path, body):
    p = tmp_path / "fuzz.json"
    p.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return str(p)


def _loader_input(base):
    text = json.dumps(base, indent=1)

    def make(rng):
        if rng.random() < 0.2:
            return mutate_text(text, rng)
        return mutate(base, rng)
    return make


DATA_FILES = ["data_tiny.json", "data_2b.json", "data_72b_dpo.json"]


@pytest.mark.parametrize("name", DATA_FILES)
def test_fuzz_data_json(tmp_path, request, name):
    from mindspeed_ms.config.data_config import DataConfigError, load_data_json
    path = os.path.join(EXAMPLES, name)
    if not os.path.isfile(path):
        pytest.skip(f"{name} not shipped")
    base = json.load(open(path))
    load_data_json(path)       # the unmutated file loads
    fuzz(request, 1000 + DATA_FILES.index(name), _loader_input(base),
         lambda case: load_data_json(_write(tmp_path, case)), DataConfigError, name)


MODEL_FILES = ["model_tiny.json", "model_2b.json", "model_7b.json"]


@pytest.mark.parametrize("name", MODEL_FILES)
def test_fuzz_model_json(tmp_path, request, name):
    """What validate_args runs on model.json: our range / missing-key checks, the loader, the shapes."""
    from mindspeed_ms.config.model_config import ModelConfigError, load_model_json
    from mindspeed_ms.config.model_json_checks import ModelJsonError, check_model_json
    from mindspeed_ms.config.param_shapes import param_count
    base = json.load(open(os.path.join(EXAMPLES, name)))

    def run(case):
        p = _write(tmp_path, case)
        check_model_json(p)
        cfg = load_model_json(p)
        check_model_json(p, cfg)
        assert param_count(cfg) > 0
    fuzz(request, 2000 + MODEL_FILES.index(name), _loader_input(base), run, (ModelConfigError, ModelJsonError),
         name)


SHAREGPT_ROW = {"images": ["images/a.png"], "messages": [
    {"role": "user", "content": "<image>What colour is the square?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And the circle?"},
    {"role": "assistant", "content": "blue"}]}
ALPACA_ROW = {"instruction": "Describe", "input": "<image>", "output": "a square", "images": ["images/a.png"],
              "history": [["hi", "hello"]], "system": "be brief"}
RANKING_ROW = {"images": ["images/a.png"], "messages": [{"from": "human", "value": "<image>Colour?"}],
               "chosen": {"from": "gpt", "value": "red"}, "rejected": {"from": "gpt", "value": "blue"}}


def _row_parser(tmp_path):
    from mindspeed_ms.config.data_config import parse_data_config
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "a.png").write_bytes(b"not decoded by the parser")
    base = json.load(open(os.path.join(EXAMPLES, "data_tiny.json")))
    cfgs = {}
    for kind, attr in (("sharegpt", {}),
                       ("alpaca", {"formatting": "alpaca", "prompt": "instruction", "query": "input",
                                   "response": "output", "history": "history", "system": "system"}),
                       ("ranking", {"ranking": True, "role_tag": "from", "content_tag": "value", "user_tag": "human",
                                    "assistant_tag": "gpt", "chosen": "chosen", "rejected": "rejected"})):
        d = copy.deepcopy(base)
        d["dataset_param"]["attr"].update(attr)
        if kind == "ranking":
            d["dataloader_param"]["collate_param"]["model_name"] = "qwen2vl_dpo"
        cfgs[kind] = parse_data_config(d, f"<{kind}>")
    return cfgs


@pytest.mark.parametrize("kind,row", [("sharegpt", SHAREGPT_ROW), ("alpaca", ALPACA_ROW), ("ranking", RANKING_ROW)])
def test_fuzz_dataset_row_parser(tmp_path, request, kind, row):
    """align_example (format alignment, roles, media paths) and the qwen2vl template's placeholder
    expansion on mutated records: success, BrokenSample (skipped with a warning) or a ValueError raised
    by our code with a message (the dataset reports it naming the file and sample)."""
    from mindspeed_ms.data.formats import BrokenSample, align_example
    cfg = _row_parser(tmp_path)[kind]
    align_example(row, cfg.attr, str(tmp_path))           # the unmutated row parses

    class OurValueError(Exception):
        pass

    def run(case):
        if not isinstance(case, dict):
            return          # datasets yields one JSON object per record: other top-level values never get here
        try:
            align_example(case, cfg.attr, str(tmp_path))
        except BrokenSample:
            raise
        except ValueError as e:
            tb = traceback.extract_tb(e.__traceback__)
            if tb and os.sep + "mindspeed_ms" + os.sep in tb[-1].filename:
                raise OurValueError(str(e)) from None
            raise
    fuzz(request, 3000 + ["sharegpt", "alpaca", "ranking"].index(kind), lambda rng: mutate(row, rng), run,
         (BrokenSample, OurValueError), kind)
