"""Packaging: sdist and wheel build and work from outside the repository; every checkout set up on
one machine runs its own code, also at the same time (docs/packaging.md)."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what a checkout's setup consists of: copied over a clone so the working tree under test is used
SETUP_FILES = ("auto_convert.sh", "pyproject.toml", "MANIFEST.in", "requirements.txt", "requirements-test.txt",
               "requirements-demo.txt", "requirements-serve.txt")


def _stamped_venv():
    """The environment `source auto_convert.sh mm` set up for these requirements (CI sources it)."""
    venv = os.environ.get("VIRTUAL_ENV") or os.path.expanduser("~/.cache/mindspeed-ms/venv")
    return venv if os.path.exists(os.path.join(venv, ".mindspeed-ms-stamp")) else None


def _clone(dest):
    subprocess.run(["git", "clone", "-q", ROOT, str(dest)], check=True, timeout=120)
    for f in SETUP_FILES:
        shutil.copy(os.path.join(ROOT, f), os.path.join(dest, f))
    shutil.rmtree(os.path.join(dest, "bin"), ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "bin"), os.path.join(dest, "bin"), symlinks=True)


def _clean_env():
    # PYTHONPATH=<checkout> (set by auto_convert.sh) would make pip see the checkout as installed
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MINDSPEED_MS_HOME")}


def _build(tmp_path):
    """sdist with the PEP 517 hooks, then the wheel built from that sdist (what a packager does).
    Built from a copy of the tracked files, so the checkout gets no build/ or egg-info."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree0 = tmp_path / "checkout"
    for rel in filter(None, tracked.decode().split("\0")):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(tree0 / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), tree0 / rel)
    for rel in SETUP_FILES:   # new files of the working tree under test
        shutil.copy2(os.path.join(ROOT, rel), tree0 / rel)
    dist = tmp_path / "dist"
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=tree0, capture_output=True, text=True,
                       timeout=300, env=_clean_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sdist = dist / r.stdout.strip().splitlines()[-1]
    src = tmp_path / "src"
    shutil.unpack_archive(str(sdist), str(src))
    (tree,) = glob.glob(str(src / "mindspeed_ms-*"))
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_wheel(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=tree, capture_output=True, text=True, timeout=300,
                       env=_clean_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return sdist, dist / r.stdout.strip().splitlines()[-1]


def test_sdist_and_wheel_build_and_run_outside_the_repository(tmp_path):
    sdist, wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "auto_convert/code/mapping.json" in names
    assert not any(n.startswith("tests/") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Python: <3.12,>=3.11" in meta
    assert "Requires-Dist: mindspore==2.10.0" in meta and "dashscope" not in meta.split("Provides-Extra")[0]
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("mm-convert", "mm-plan", "mm-chat", "mm-evaluate", "mm-serve", "mm-auto-convert"):
        assert f"{script} =" in entry, entry

    # a fresh venv: this wheel, its dependencies from the same pins as the test environment (the
    # already installed ones, through a .pth file, instead of a second 800 MB download; the slow
    # test below installs them from the index)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))[0]
    with open(os.path.join(site, "shared_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300, env=_clean_env())
    if r.returncode != 0 and "no such option: --python" in r.stderr:
        pytest.skip("pip too old for --python")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    _run_installed(venv, tmp_path)


def _run_installed(venv, tmp_path):
    work = tmp_path / "outside"
    work.mkdir()
    env = _clean_env()
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    py = str(venv / "bin" / "python")

    def run(*cmd):
        r = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return r.stdout

    where = run(py, "-c", "import mindspeed_ms, auto_convert; print(mindspeed_ms.__file__, auto_convert.__file__)")
    assert ROOT not in where and str(venv) in where
    assert "Qwen2VLConverter" in run(str(venv / "bin" / "mm-convert"), "--help")
    # the examples are not part of the wheel: a user passes their model.json
    shutil.copy(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json"), work / "model.json")
    run(py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", str(work / "hf"), "--seed", "3",
        "--mm-model", str(work / "model.json"))
    run(str(venv / "bin" / "mm-convert"), "Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", str(work / "mm"),
        "--cfg.hf_config.hf_dir", str(work / "hf"), "--cfg.parallel_config.llm_pp_layers", "[[2]]",
        "--cfg.parallel_config.vit_pp_layers", "[[2]]", "--cfg.parallel_config.tp_size", "1",
        "--cfg.progress", "false")
    assert (work / "mm" / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    # the PyTorch-API code converter with the mapping table shipped in the wheel
    src = work / "torch_code"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "torch_code", "samples"), src)
    run(str(venv / "bin" / "mm-auto-convert"), "code", str(src), str(work / "ms_code"))
    out = "".join(open(p).read() for p in glob.glob(str(work / "ms_code" / "**" / "*.py"), recursive=True))
    assert "mindspore" in out and "import torch" not in out
    assert "usage" in run(str(venv / "bin" / "mm-plan"), "--help").lower()


@pytest.mark.slow
def test_wheel_installs_with_its_pinned_dependencies(tmp_path):
    """The real thing: a fresh venv, `pip install` the wheel and its pins from the index."""
    _, wheel = _build(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", f"{wheel}[demo]"],
                       capture_output=True, text=True, timeout=3000, env=_clean_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _run_installed(venv, tmp_path)


def _bash(script, cwd, venv):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MINDSPEED_MS_HOME")}
    env["MINDSPEED_MS_VENV"] = venv
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_checkouts_on_one_machine_run_their_own_code(tmp_path):
    venv = _stamped_venv()
    if venv is None:
        pytest.skip("no environment set up by auto_convert.sh (run `source auto_convert.sh mm`)")
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    _clone(a)
    _clone(b)
    elsewhere.mkdir()
    # clone b's code changes; a's must not see it, from any working directory
    with open(b / "mindspeed_ms" / "__init__.py", "a") as f:
        f.write("\nCHECKOUT_MARK = 'b'\n")
    for c in (a, b):
        (c / "tests" / "test_which_checkout.py").write_text(
            "import mindspeed_ms, os\n"
            "def test_which():\n"
            f"    assert os.path.realpath(mindspeed_ms.__file__).startswith(os.path.realpath({str(c)!r}))\n")
    probe = ("python -c \"import mindspeed_ms, os; print('FILE', os.path.realpath(mindspeed_ms.__file__), "
             "getattr(mindspeed_ms, 'CHECKOUT_MARK', 'a'))\"")
    script = ("source auto_convert.sh mm >/dev/null || exit 9; cd {elsewhere}; for i in 1 2 3; do {probe}; "
              "mm-convert --help >/dev/null || exit 7; echo MMC $(command -v mm-convert); done; "
              "cd {clone} && python -m pytest -q -p no:cacheprovider tests/test_which_checkout.py")
    procs = {c: _bash(script.format(elsewhere=elsewhere, probe=probe, clone=c), c, venv) for c in (a, b)}
    for c, p in procs.items():   # both ran at the same time
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out[-2000:] + err[-2000:]
        files = [l.split()[1:] for l in out.splitlines() if l.startswith("FILE")]
        assert len(files) == 3
        for path, mark in files:
            assert path.startswith(os.path.realpath(c)), (c, path)
            assert mark == c.name
        assert all(l.split()[1] == str(c / "bin" / "mm-convert") for l in out.splitlines() if l.startswith("MMC"))
        assert "1 passed" in out
    # a shell that sourced a, then b: b's code first, a's entries gone
    p = _bash(f"source {a}/auto_convert.sh mm >/dev/null && source {b}/auto_convert.sh mm >/dev/null && "
              f"cd {elsewhere} && {probe} && echo PP=$PYTHONPATH && echo PATH=$PATH", a, venv)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, out + err
    assert f"FILE {os.path.realpath(b)}" in out and str(a) not in out.split("PP=")[1]


def test_checkout_commands_are_the_console_scripts():
    """bin/ (a checkout's commands) and pyproject's [project.scripts] (the wheel's) name the same
    entry points, and each runs its --help from another directory."""
    import tomllib
    scripts = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["scripts"]
    wrappers = sorted(f for f in os.listdir(os.path.join(ROOT, "bin")) if not f.startswith("_"))
    assert wrappers == sorted(scripts)
    env = dict(os.environ)
    env["PATH"] = os.path.join(ROOT, "bin") + ":" + os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    for name, entry in scripts.items():
        text = open(os.path.join(ROOT, "bin", name)).read()
        assert f"_run_entry\" {entry} {name} " in text, name
        r = subprocess.run([name, "--help"], cwd="/", env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (name, r.stdout[-500:], r.stderr[-500:])
