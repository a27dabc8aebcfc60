"""mm-convert never deletes or overwrites what it did not write: every command refuses, before writing
anything, an output directory holding foreign files, a source directory or a parent of one; a
re-run into its own earlier output is allowed and replaces only its own entries."""
import os

import pytest

from mindspeed_ms.checkpoint import cli
from mindspeed_ms.checkpoint.converter import hf_to_mm
from mindspeed_ms.checkpoint.layout import LATEST_FILE, latest_tag, write_latest
from mindspeed_ms.checkpoint.output_dir import MANIFEST
from test_convert_fixtures import make_tiny_hf


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_out")
    make_tiny_hf(d / "hf", shards=2)
    hf_to_mm(d / "hf", d / "mm", [[6]], [[4]], 1, progress=False)
    return d / "hf", d / "mm"


def snapshot(root):
    """{relative path: bytes} of every file under root (and the directories, as None)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def hf_to_mm_argv(hf_dir, mm_dir):
    return ["Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", str(mm_dir), "--cfg.hf_config.hf_dir", str(hf_dir),
            "--cfg.parallel_config.llm_pp_layers", "[[6]]", "--cfg.parallel_config.vit_pp_layers", "[[4]]",
            "--cfg.progress", "false"]


def mm_to_hf_argv(mm_dir, hf_dir, out):
    return ["Qwen2VLConverter", "mm_to_hf", "--cfg.save_hf_dir", str(out), "--cfg.mm_dir", str(mm_dir),
            "--cfg.hf_config.hf_dir", str(hf_dir), "--cfg.progress", "false"]


def resplit_argv(src, out):
    return ["Qwen2VLConverter", "resplit", "--cfg.source_dir", str(src), "--cfg.target_dir", str(out),
            "--cfg.target_parallel_config.llm_pp_layers", "[2,4]",
            "--cfg.target_parallel_config.vit_pp_layers", "[4,0]", "--cfg.progress", "false"]


def refused(argv, capsys, *words):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mm-convert: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert str(w) in err, (w, err)
    return err


def foreign_dir(path):
    os.makedirs(path / "sub", exist_ok=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return snapshot(path)


@pytest.mark.parametrize("command", ["hf_to_mm", "mm_to_hf", "resplit"])
def test_foreign_files_refused_untouched(tmp_path, hf, capsys, command):
    hf_dir, mm_dir = hf
    out = tmp_path / "out"
    before = foreign_dir(out)
    argv = {"hf_to_mm": hf_to_mm_argv(hf_dir, out), "mm_to_hf": mm_to_hf_argv(mm_dir, hf_dir, out),
            "resplit": resplit_argv(mm_dir, out)}[command]
    refused(argv, capsys, out, "notes.txt", "did not write")
    assert snapshot(out) == before
    assert [n for n in os.listdir(tmp_path) if n != "out"] == []   # no temporary sibling either


def test_mm_to_hf_into_sources_refused(tmp_path, hf, capsys):
    hf_dir, mm_dir = hf
    keep_hf, keep_mm = snapshot(hf_dir), snapshot(mm_dir)
    refused(mm_to_hf_argv(mm_dir, hf_dir, mm_dir), capsys, "--cfg.save_hf_dir", mm_dir, "--cfg.mm_dir")
    refused(mm_to_hf_argv(mm_dir, hf_dir, hf_dir), capsys, "--cfg.hf_config.hf_dir")
    refused(mm_to_hf_argv(mm_dir, hf_dir, hf_dir.parent), capsys, "contains", hf_dir)
    refused(resplit_argv(mm_dir, mm_dir), capsys, "--cfg.target_dir", "--cfg.source_dir")
    refused(resplit_argv(mm_dir, mm_dir.parent), capsys, "contains")
    refused(hf_to_mm_argv(hf_dir, hf_dir.parent), capsys, "contains")
    assert snapshot(hf_dir) == keep_hf and snapshot(mm_dir) == keep_mm


def test_hf_to_mm_into_training_save_refused(tmp_path, hf, capsys):
    """A --save directory (iter_N, latest = N) keeps pointing at N: the next --load resumes there."""
    hf_dir, mm_dir = hf
    save = tmp_path / "save"
    os.makedirs(save / "iter_0000005" / "mp_rank_00")
    (save / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"training state")
    write_latest(save, 5)
    before = snapshot(save)
    refused(hf_to_mm_argv(hf_dir, save), capsys, save, "says 5", "new, empty directory")
    assert snapshot(save) == before and latest_tag(save) == 5


def test_output_is_a_file_refused(tmp_path, hf, capsys):
    hf_dir, mm_dir = hf
    f = tmp_path / "file"
    f.write_text("x")
    refused(hf_to_mm_argv(hf_dir, f), capsys, f, "is a file")
    refused(hf_to_mm_argv(hf_dir, f / "below"), capsys, f, "is a file")
    refused(mm_to_hf_argv(mm_dir, hf_dir, f), capsys, f, "is a file")
    refused(resplit_argv(mm_dir, f), capsys, f, "is a file")
    assert f.read_text() == "x"


def test_rerun_into_own_output_and_empty_dir(tmp_path, hf, capsys):
    hf_dir, mm_dir = hf
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(hf_to_mm_argv(hf_dir, empty)) == 0
    assert cli.main(hf_to_mm_argv(hf_dir, empty)) == 0          # its own output: replaced
    assert latest_tag(empty) == "release"
    assert sorted(os.listdir(empty)) == sorted([MANIFEST, LATEST_FILE, "release"])
    back = tmp_path / "back"
    assert cli.main(mm_to_hf_argv(mm_dir, hf_dir, back)) == 0
    first = snapshot(back)
    assert cli.main(mm_to_hf_argv(mm_dir, hf_dir, back)) == 0
    assert snapshot(back) == first
    rs = tmp_path / "rs"
    assert cli.main(resplit_argv(mm_dir, rs)) == 0
    assert cli.main(resplit_argv(mm_dir, rs)) == 0
    # a foreign file added afterwards makes the next run refuse, and it survives
    (back / "README.md").write_text("user notes")
    refused(mm_to_hf_argv(mm_dir, hf_dir, back), capsys, "README.md")
    assert (back / "README.md").read_text() == "user notes"
