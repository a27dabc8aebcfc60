"""Qwen2.5-VL data side: a video's second_per_grid_ts from its sampled fps (MindSpeed-MM's rule),
and the collator with the family's batch layout (window order, two segment rows, absolute time)."""
import numpy as np

from helpers.images import write_gif, write_image
from mindspeed_ms.config.model_config import load_model_json
from mindspeed_ms.data.collator import Qwen2VLCollator
from mindspeed_ms.data.image_io import sampled_fps
from mindspeed_ms.models.qwen2_5vl.batch import Qwen2_5VLBatch
from mindspeed_ms.models.qwen2vl.batch import Qwen2VLBatch
from test_model_config_qwen2_5vl import EXAMPLES

PATCH_DIM = 3 * 2 * 14 * 14


def test_sampled_fps_is_kept_frames_over_duration(tmp_path):
    gif = str(tmp_path / "v.gif")
    write_gif(gif, 20, duration_ms=100)                           # 2 s
    assert sampled_fps(gif, 2.0, 128) == 2.0                      # floor(2 s * 2) = 4 frames / 2 s
    assert sampled_fps(gif, 2.0, 3) == 1.5                        # capped at video_maxlen: 3 / 2 s
    assert sampled_fps(gif, 20.0, 128) == 10.0                    # at most every frame: 20 / 2 s
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        write_image(str(frames / f"{i}.png"), seed=i)
    assert sampled_fps(str(frames), 2.5, 128) == 2.5              # no duration: video_fps


def _sample(rng, img_grid=None, vid_grid=None, seconds=None, n_text=6):
    ids, out = list(rng.integers(0, 900, n_text)), {}
    for kind, grid, pad in (("image", img_grid, 151655), ("video", vid_grid, 151656)):
        if grid is None:
            continue
        t, h, w = grid
        ids += [151652] + [pad] * (t * h * w // 4) + [151653]
        key = "pixel_values" if kind == "image" else "pixel_values_videos"
        out[key] = rng.standard_normal((t * h * w, PATCH_DIM)).astype(np.float32)
        out[f"{kind}_grid_thw"] = np.array([grid])
    ids += list(rng.integers(0, 900, 3))
    out.update(input_ids=np.array(ids, np.int32), labels=np.array(ids, np.int32))
    if seconds is not None:
        out["second_per_grid_ts"] = np.array(seconds)
    return out


def test_collator_with_the_family_layout_equals_the_model_path():
    cfg = load_model_json(EXAMPLES / "model_tiny.json")
    layout = Qwen2_5VLBatch(cfg)
    rng = np.random.default_rng(0)
    samples = [_sample(rng, img_grid=(1, 12, 10)), _sample(rng, vid_grid=(4, 8, 8), seconds=[1.5])]
    batch = Qwen2VLCollator(256, batch_layout=layout)(samples)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pix = np.concatenate([samples[0]["pixel_values"], samples[1]["pixel_values_videos"]])
    n = batch["pixel_values"].shape[0]
    pix = np.concatenate([pix, np.zeros((n - pix.shape[0], PATCH_DIM), np.float32)])
    want = layout.vision_inputs(ids, pix, batch["image_grid_thw"], batch["video_grid_thw"], n)
    for k, v in want.items():
        np.testing.assert_array_equal(batch[k], v, err_msg=k)
    assert batch["vision_segment_ids"].shape == (2, n)
    pos, _ = layout.position_ids(ids, batch["image_grid_thw"], batch["video_grid_thw"], mask, [1.5])
    np.testing.assert_array_equal(batch["position_ids"], pos)
    # the video's temporal steps 0..3 sit at int(k * 1.5 * tokens_per_second = 2) = 0, 3, 6, 9
    video = ids[1] == 151656
    steps = np.unique(pos[0, 1, video] - pos[0, 1, video].min())
    np.testing.assert_array_equal(steps, [0, 3, 6, 9])
    # Qwen2-VL's layout ignores the seconds (frames 0, 1, 2, 3) and keeps one segment row
    plain = Qwen2VLCollator(256, batch_layout=Qwen2VLBatch(None))(samples)
    assert plain["vision_segment_ids"].shape == (n,)
    v2 = plain["input_ids"][1] == 151656
    np.testing.assert_array_equal(np.unique(plain["position_ids"][0, 1, v2] - plain["position_ids"][0, 1, v2].min()),
                                  [0, 1, 2, 3])


def test_dp_offsets_cover_both_segment_rows():
    from mindspeed_ms.models.qwen2vl.inputs import offset_vision_inputs
    cfg = load_model_json(EXAMPLES / "model_tiny.json")
    rng = np.random.default_rng(1)
    batch = Qwen2VLCollator(256, batch_layout=Qwen2_5VLBatch(cfg), num_patches=512, vision_segments=12,
                            buckets=[256])([_sample(rng, img_grid=(1, 12, 10))])
    vis = {k: batch[k] for k in ("vision_segment_ids", "vision_gather_index", "vision_token_mask", "vision_cu_seqlens")}
    assert vis["vision_cu_seqlens"].shape == (2, 12) and (vis["vision_cu_seqlens"][:, -1] == 512).all()
    out = offset_vision_inputs(vis, 1, 2)
    np.testing.assert_array_equal(out["vision_segment_ids"], vis["vision_segment_ids"] + 512)
    np.testing.assert_array_equal(out["vision_cu_seqlens"], vis["vision_cu_seqlens"] + 512)
