"""Directory layout of MindSpeed-MM checkpoints and atomic publication.

    <root>/latest_checkpointed_iteration.txt     "release" (conversion) or the iteration (training)
    <root>/release/ | <root>/iter_0000010/
        mp_rank_{tp:02d}/model_optim_rng.pt           (pp == 1)
        mp_rank_{tp:02d}_{pp:03d}/model_optim_rng.pt  (pp > 1)
        (model_optim_rng.safetensors instead with --ckpt-format safetensors)

A tag directory is built under a hidden temporary name and renamed into place; the pointer file is
replaced last, so a crash leaves either the old checkpoint or the new one, never a half-written one.
"""
import os
import re
import shutil
import uuid

LATEST_FILE = "latest_checkpointed_iteration.txt"
PT_FILE = "model_optim_rng.pt"
SAFETENSORS_FILE = "model_optim_rng.safetensors"
FORMATS = {"pt": PT_FILE, "torch": PT_FILE, "safetensors": SAFETENSORS_FILE}
_RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?\Z")


class LayoutDirError(ValueError):
    """A checkpoint directory is missing or not laid out as MindSpeed-MM writes it."""


def tag_dir_name(tag) -> str:
    """'release' for conversions, iter_{N:07d} for a training iteration N."""
    if tag == "release":
        return "release"
    if isinstance(tag, str) and tag.startswith("iter_"):
        return tag
    try:
        return f"iter_{int(tag):07d}"
    except (TypeError, ValueError):
        raise LayoutDirError(f"checkpoint tag must be 'release' or an iteration number, got {tag!r}") from None


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else "")


def parse_rank_dir(name):
    """(tp_rank, pp_rank or None) for an mp_rank_* directory name, else None."""
    m = _RANK_DIR.match(name)
    if not m:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def latest_tag(root):
    """The tag that `latest_checkpointed_iteration.txt` of `root` points to: 'release' or an int."""
    root = str(root)
    if not os.path.isdir(root):
        raise LayoutDirError(f"checkpoint directory {root} does not exist")
    path = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(path):
        raise LayoutDirError(f"{root} has no {LATEST_FILE}: not a MindSpeed-MM checkpoint directory "
                             f"(or its save did not finish)")
    text = open(path, encoding="utf-8").read().strip()
    if text == "release":
        return "release"
    try:
        return int(text)
    except ValueError:
        raise LayoutDirError(f"{path} holds {text!r}; expected 'release' or an iteration number") from None


def write_latest(root, tag):
    tmp = os.path.join(str(root), f".{LATEST_FILE}.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("release" if tag == "release" else str(int(tag)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(str(root), LATEST_FILE))


class AtomicTagDir:
    """Context manager: yields a temporary directory that becomes <root>/<tag dir> on success.

    On failure the temporary directory is removed, and so is `root` if this call created it."""

    def __init__(self, root, tag, update_latest=True):
        self.root, self.tag, self.update_latest = str(root), tag, update_latest
        self.final = os.path.join(self.root, tag_dir_name(tag))

    def __enter__(self):
        self.created_root = not os.path.exists(self.root)
        os.makedirs(self.root, exist_ok=True)
        self.tmp = os.path.join(self.root, f".tmp-{tag_dir_name(self.tag)}-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.created_root and not os.listdir(self.root):
                os.rmdir(self.root)
            return False
        old = None
        if os.path.exists(self.final):
            old = os.path.join(self.root, f".old-{tag_dir_name(self.tag)}-{uuid.uuid4().hex[:8]}")
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        if self.update_latest:
            write_latest(self.root, self.tag)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False
