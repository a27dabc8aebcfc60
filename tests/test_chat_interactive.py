"""`python -m mindspeed_ms.inference.chat` without --prompt: an interactive session driven through
stdin. Several turns (the conversation so far, images included, is each turn's prompt: answers
equal `chat.answer` on the same history), an image and a video attached with /image and /video, a
bad path reported without ending the session, /clear, and end of input."""
import io

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

from mindspeed_ms.inference import chat

ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mindspeed_ms.tools.make_tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ichat")
    hf = make_tiny_checkpoint(str(root / "hf"), seed=9)
    rng = np.random.default_rng(1)
    img = root / "a.png"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(img)
    frames = root / "clip"
    frames.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(frames / f"{i:03d}.png")
    loaded, builder, sampling = chat.build_from_args(chat.build_parser().parse_args(["--load", hf]))
    return {"hf": hf, "img": str(img), "video": str(frames), "model": (loaded, builder, sampling)}


def _run(monkeypatch, capsys, lines, *extra):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = chat.main(["--load", *extra, "--max-new-tokens", "6"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return [l[len("Assistant: "):] for l in out.out.splitlines() if l.startswith("Assistant: ")], out.err


def test_interactive_turns_with_image_and_video(setup):
    from dataclasses import replace

    lines = ["/image " + setup["img"], "What colour is it?", "/image /no/such.png", "And the shape?",
             "/video " + setup["video"], "What happens here?", "/clear", "/image " + setup["img"],
             "What colour is it?", "/bogus", "/exit", "ignored"]
    loaded, builder, sampling = setup["model"]
    out, err = io.StringIO(), io.StringIO()
    rc = chat.interactive(loaded, builder, sampling, 6, stdin=io.StringIO("\n".join(lines) + "\n"), stdout=out,
                          stderr=err)
    err = err.getvalue()
    assert rc == 0
    answers = [l[len("Assistant: "):] for l in out.getvalue().splitlines() if l.startswith("Assistant: ")]
    assert len(answers) == 4, err
    assert "image file not found: /no/such.png" in err and "new conversation" in err
    assert "unknown command /bogus" in err
    # the same conversations answered directly: each turn sees the history with its media
    def ref(msgs, images=(), videos=(), turn=0):
        return chat.answer(loaded, builder, replace(sampling, seed=sampling.seed + turn), msgs, images, 6,
                           True, videos)

    h = [{"role": "user", "content": "<image>What colour is it?"}]
    assert answers[0] == ref(h, [setup["img"]])
    h += [{"role": "assistant", "content": answers[0]}, {"role": "user", "content": "And the shape?"}]
    assert answers[1] == ref(h, [setup["img"]], turn=1)
    h += [{"role": "assistant", "content": answers[1]}, {"role": "user", "content": "<video>What happens here?"}]
    assert answers[2] == ref(h, [setup["img"]], [setup["video"]], turn=2)
    # after /clear the first question again, alone: the one-shot answer
    assert answers[3] == answers[0]
    # the history matters: the second turn asked alone gives another prompt
    alone = builder.build([{"role": "user", "content": "And the shape?"}])
    assert len(alone["input_ids"]) < len(builder.build(h[:3], [setup["img"]])["input_ids"])


def test_end_of_input_and_flags_outside_interactive(setup, monkeypatch, capsys):
    answers, err = _run(monkeypatch, capsys, ["", "hello"], setup["hf"])
    assert len(answers) == 1 and "interactive" in err
    with pytest.raises(SystemExit):
        chat.main(["--load", setup["hf"], "--image", setup["img"]])
    assert "/image PATH" in capsys.readouterr().err
