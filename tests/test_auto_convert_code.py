"""auto_convert.code: PyTorch-API files -> MindSpore files that compute the same thing."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "torch_code")
SAMPLES = os.path.join(FIXTURES, "samples")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "auto_convert.code", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ms_code")
    r = _run_cli(SAMPLES, str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 unmapped" in r.stdout
    return out


def test_converted_text_is_mindspore(converted):
    for name in ("mlp.py", "loss.py", "collate.py"):
        text = (converted / name).read_text()
        assert "torch" not in text.replace("torch.nn.Module", ""), name
        assert "import mindspore" in text or "from mindspore import" in text
    mlp = (converted / "mlp.py").read_text()
    assert "class MLPBlock(nn.Cell):" in mlp
    assert "def construct(self, x: ms.Tensor) -> ms.Tensor:" in mlp
    assert "super().construct(x)" in mlp  # the subclass of a converted class follows
    assert "# exact (erf) GELU" in mlp and "# pre-norm feed-forward" in mlp  # comments survive
    assert "nn.GELU(approximate=False)" in mlp and "epsilon=eps" in mlp
    collate = (converted / "collate.py").read_text()
    assert "ops.pad(t, (0, pad), value=pad_id)" in collate
    assert "ops.stack(labels, axis=0)" in collate and "t.shape[0]" in collate
    loss = (converted / "loss.py").read_text()
    # the call keeps its multi-line layout
    assert "ops.cross_entropy(\n        shift_logits.view(-1, vocab),\n" in loss


def test_mlp_matches_torch(converted):
    torch = pytest.importorskip("torch")
    import mindspore as ms
    torch_mod = _load(os.path.join(SAMPLES, "mlp.py"), "torch_mlp")
    ms_mod = _load(str(converted / "mlp.py"), "ms_mlp")
    torch.manual_seed(0)
    for cls in ("MLPBlock", "TwoBlocks"):
        t_net = getattr(torch_mod, cls)(8, 16)
        with torch.no_grad():
            for p in t_net.parameters():  # LayerNorm too: not left at ones/zeros
                p.copy_(torch.randn_like(p) * 0.5)
        m_net = getattr(ms_mod, cls)(8, 16)
        m_params = dict(m_net.parameters_and_names())
        t_state = {k.replace("norm.weight", "norm.gamma").replace("norm.bias", "norm.beta"): v
                   for k, v in t_net.state_dict().items()}
        assert sorted(m_params) == sorted(t_state), cls
        for k, v in t_state.items():
            m_params[k].set_data(ms.Tensor(v.numpy()))
        x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)
        want = t_net(torch.from_numpy(x)).detach().numpy()
        got = m_net(ms.Tensor(x)).asnumpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=cls)


def test_loss_matches_torch(converted):
    torch = pytest.importorskip("torch")
    import mindspore as ms
    torch_mod = _load(os.path.join(SAMPLES, "loss.py"), "torch_loss")
    ms_mod = _load(str(converted / "loss.py"), "ms_loss")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 6, 11)).astype(np.float32)
    labels = rng.integers(0, 11, (2, 6)).astype(np.int64)
    labels[0, :3] = -100  # prompt tokens
    labels[1, -1] = -100  # padding
    want = torch_mod.shifted_lm_loss(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    got = ms_mod.shifted_lm_loss(ms.Tensor(logits), ms.Tensor(labels)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    want = torch_mod.summed_loss(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    got = ms_mod.summed_loss(ms.Tensor(logits), ms.Tensor(labels)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_collate_matches_torch(converted):
    torch = pytest.importorskip("torch")
    torch_mod = _load(os.path.join(SAMPLES, "collate.py"), "torch_collate")
    ms_mod = _load(str(converted / "collate.py"), "ms_collate")
    rng = np.random.default_rng(3)
    samples = [{"input_ids": rng.integers(1, 100, n), "labels": rng.integers(-1, 100, n),
                "features": rng.standard_normal(4).astype(np.float32)} for n in (5, 3, 7)]
    want = torch_mod.collate(samples, pad_id=0)
    got = ms_mod.collate(samples, pad_id=0)
    assert sorted(got) == sorted(want)
    for k in want:
        g, w = got[k].asnumpy(), want[k].numpy()
        assert g.shape == w.shape and g.dtype == w.dtype, k
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=k)


def test_unmapped_api_is_reported_and_fails(tmp_path):
    r = _run_cli(os.path.join(FIXTURES, "unmapped"), str(tmp_path / "out"))
    assert r.returncode == 1
    assert "unmapped/uses_fft.py:6:12: torch.fft.rfft: no MindSpore mapping" in r.stderr
    out = (tmp_path / "out" / "uses_fft.py").read_text()
    assert "mint.mean(mint.abs(x))" in out  # what could be mapped still is
    assert "import torch" in out            # the unmapped use still has its import
    r = _run_cli(os.path.join(FIXTURES, "unmapped"), str(tmp_path / "out2"), "--allow-partial")
    assert r.returncode == 0 and "torch.fft.rfft" in r.stderr


def test_argument_rules(tmp_path):
    from auto_convert.code import convert_source, load_mapping
    m = load_mapping()
    src = ("import torch\nimport torch.nn as nn\n"
           "a = torch.zeros(2, 3, device='cpu')\n"
           "g = nn.GELU(approximate='tanh')\n"
           "b = nn.LayerNorm([4, 4], elementwise_affine=False)\n"
           "c = torch.nn.functional.log_softmax(a, 1)\n"
           "d = a.repeat(2, 1)\n"
           "e = a.detach()\n")
    out, unmapped = convert_source(src, "x.py", m)
    assert "mint.zeros((2, 3))" in out
    assert "nn.GELU(approximate=True)" in out
    assert "ops.log_softmax(a, 1)" in out  # dim stays positional: same place in ops.log_softmax
    assert "a.tile((2, 1))" in out and "ops.stop_gradient(a)" in out
    assert [(u.line, u.api) for u in unmapped] == [(5, "torch.nn.LayerNorm")]
    assert "elementwise_affine=False" in unmapped[0].reason
    # partial result: torch's `nn` stays imported, so MindSpore's is written in full
    assert "import torch.nn as nn" in out and "mindspore.nn.GELU(approximate=True)" in out


def test_every_mapping_target_runs_on_this_machine():
    # many mint ops have no CPU kernel in MindSpore 2.10: the table must only name ones that run
    r = _run_cli("--check-mapping")
    assert r.returncode == 0, r.stdout + r.stderr
