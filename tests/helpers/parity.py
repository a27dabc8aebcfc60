"""Helpers shared by the model parity tests of every family (tests/test_model_parity*.py):
HF-style inputs from a compact description, the HF forward, the MM fusions written independently
of mindspeed_ms.checkpoint, and a scale-relative difference."""
import numpy as np
import torch

PATCH_DIM = 3 * 2 * 14 * 14


def vision_block(cfg, kind, grid):
    """<|vision_start|>, one pad token per merged patch of `grid`, <|vision_end|>."""
    pad = cfg.image_token_id if kind == "i" else cfg.video_token_id
    t, h, w = grid
    return [cfg.vision_start_token_id] + [pad] * (t * h * w // 4) + [cfg.vision_end_token_id]


def build_inputs(cfg, samples, side, rng, patch_dim=PATCH_DIM):
    """HF-style inputs of a batch. `samples`: one list of parts per sample, a part being an int (that
    many random text tokens) or ('i' | 'v', (t, h, w)); `side`: padding side. Labels: the real
    tokens except the first third of the row (a prompt part without loss)."""
    seqs, img_grids, vid_grids = [], [], []
    for parts in samples:
        toks = []
        for p in parts:
            if isinstance(p, int):
                toks += rng.integers(0, 900, p).tolist()
            else:
                toks += vision_block(cfg, *p)
                (img_grids if p[0] == "i" else vid_grids).append(p[1])
        seqs.append(toks)
    s = max(len(x) for x in seqs)
    ids = np.zeros((len(seqs), s), np.int64)
    mask = np.zeros((len(seqs), s), np.int64)
    for i, x in enumerate(seqs):
        sl = slice(s - len(x), s) if side == "left" else slice(0, len(x))
        ids[i, sl], mask[i, sl] = x, 1
    labels = np.where(mask == 1, ids, -100)
    labels[:, : s // 3] = -100
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if img_grids:
        g = np.array(img_grids)
        inputs["image_grid_thw"] = g
        inputs["pixel_values"] = rng.standard_normal((int(g.prod(1).sum()), patch_dim)).astype(np.float32)
    if vid_grids:
        g = np.array(vid_grids)
        inputs["video_grid_thw"] = g
        inputs["pixel_values_videos"] = rng.standard_normal((int(g.prod(1).sum()), patch_dim)).astype(np.float32)
    return inputs


def hf_forward(hf, inputs, grad=False):
    with torch.set_grad_enabled(grad):
        return hf(**{k: torch.tensor(v) for k, v in inputs.items()})


def fuse_llm_qkv(q, k, v, groups):
    """Interleave per kv group: [q_g0, k_g0, v_g0, q_g1, ...] (independent of mindspeed_ms.checkpoint)."""
    qs, ks, vs = np.split(q, groups), np.split(k, groups), np.split(v, groups)
    return np.concatenate([np.concatenate(t) for t in zip(qs, ks, vs)])


def fuse_vit_qkv(qkv, heads):
    q, k, v = np.split(qkv, 3)
    return np.concatenate([np.concatenate(t) for t in zip(np.split(q, heads), np.split(k, heads), np.split(v, heads))])


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def eager_and_graph(model, args):
    """`model(*args)` in PYNATIVE and then in GRAPH mode (back to PYNATIVE afterwards)."""
    import mindspore as ms
    eager = model(*args)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        graph = model(*args)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    return eager, graph
