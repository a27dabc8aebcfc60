"""Read and write Hugging Face checkpoint directories (config.json + safetensors) with numpy.

A directory holds either one `model.safetensors` or shards listed by
`model.safetensors.index.json` ({"weight_map": {name: file}}). Reading is lazy (memory-mapped) so
a conversion can stream; bf16 tensors come back as `ml_dtypes.bfloat16` arrays.
"""
import json
import os
import shutil

import numpy as np

from .safetensors_io import SafetensorsError, SafetensorsFile, save_safetensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, incomplete or inconsistent (message says which)."""


def load_hf_config(hf_dir) -> dict:
    """config.json of `hf_dir` as a dict."""
    hf_dir = str(hf_dir)
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"HF checkpoint directory {hf_dir} does not exist (check --cfg.hf_config.hf_dir)")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{hf_dir} has no config.json: it is not a Hugging Face model directory "
                              f"(copy config.json from the original model)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


class HFCheckpoint:
    """Lazy view of the weights of an HF directory: `keys()`, `shape(k)`, `dtype(k)`, `get(k)`,
    `file_of(k)`, plus `config` (config.json) and `weight_map` (name -> shard file name)."""

    def __init__(self, hf_dir):
        self.hf_dir = str(hf_dir)
        self.config = load_hf_config(self.hf_dir)
        index_path = os.path.join(self.hf_dir, INDEX_FILE)
        single_path = os.path.join(self.hf_dir, SINGLE_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    index = json.load(f)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{index_path} is not valid JSON: {e}") from None
            if not isinstance(index.get("weight_map"), dict):
                raise CheckpointError(f"{index_path} has no 'weight_map' object")
            self.weight_map = dict(index["weight_map"])
            self.index_metadata = index.get("metadata", {})
        elif os.path.isfile(single_path):
            self.weight_map = None
            self.index_metadata = None
        else:
            raise CheckpointError(f"{self.hf_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}: no weights to read")
        self._files = {}
        if self.weight_map is None:
            f = self._open(SINGLE_FILE)
            self.weight_map = {k: SINGLE_FILE for k in f.keys()}
            self.sharded = False
        else:
            self.sharded = True
            for shard in dict.fromkeys(self.weight_map.values()):
                f = self._open(shard)
                listed = [k for k, v in self.weight_map.items() if v == shard]
                missing = [k for k in listed if k not in f]
                if missing:
                    raise CheckpointError(f"{os.path.join(self.hf_dir, shard)} lacks {len(missing)} tensors that "
                                          f"{INDEX_FILE} places there, e.g. {missing[0]}")

    def _open(self, shard):
        if shard not in self._files:
            path = os.path.join(self.hf_dir, shard)
            if not os.path.isfile(path):
                raise CheckpointError(f"shard {shard} listed in {os.path.join(self.hf_dir, INDEX_FILE)} "
                                      f"is missing from {self.hf_dir} (download it again)")
            try:
                self._files[shard] = SafetensorsFile(path)
            except SafetensorsError as e:
                raise CheckpointError(str(e)) from None
        return self._files[shard]

    def keys(self):
        return list(self.weight_map)

    def __contains__(self, name):
        return name in self.weight_map

    def file_of(self, name):
        return self.weight_map[name]

    def shape(self, name):
        return self._open(self.weight_map[name]).shape(name)

    def dtype(self, name):
        return self._open(self.weight_map[name]).dtype(name)

    def get(self, name) -> np.ndarray:
        if name not in self.weight_map:
            raise KeyError(f"tensor {name} is not in the HF checkpoint {self.hf_dir}")
        return self._open(self.weight_map[name]).get(name)

    def shards(self):
        """Shard file names in first-appearance order of the weight map."""
        return list(dict.fromkeys(self.weight_map.values()))


def load_hf_state_dict(hf_dir) -> dict:
    """All tensors of the HF directory `hf_dir` as {name: np.ndarray} (bf16 as ml_dtypes.bfloat16)."""
    ckpt = HFCheckpoint(hf_dir)
    return {k: ckpt.get(k) for k in ckpt.keys()}


# Files of an HF model directory that are not weights and travel with a converted model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def copy_hf_side_files(src_dir, dst_dir):
    """Copy config, tokenizer, processor and other non-weight files of `src_dir` into `dst_dir`."""
    copied = []
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path) or name == INDEX_FILE or name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, os.path.join(dst_dir, name))
        copied.append(name)
    return copied


def write_hf_index(dst_dir, weight_map, total_size):
    with open(os.path.join(dst_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": int(total_size)}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def save_hf_state_dict(state_dict, dst_dir, config=None):
    """Write `state_dict` as one model.safetensors (+ config.json when given) into `dst_dir`."""
    os.makedirs(dst_dir, exist_ok=True)
    save_safetensors(state_dict, os.path.join(dst_dir, SINGLE_FILE), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(dst_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
