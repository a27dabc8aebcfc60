"""The OpenAI-compatible server, started on 127.0.0.1 as a user starts it, answers the official
`openai` client: a picture (data URL and local path), plain and streaming; the streamed text equals
the plain text and equals `model.generate`'s; stop strings; a full queue gets 503; malformed JSON,
an unreadable image, a missing file, an unknown key and an unknown model get 400/404 with a
message, and the server stays up after each; greedy requests that wait together run as one batch
and get the answers they get alone."""
import base64
import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import mindspore as ms  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny-vl"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mindspeed_ms.tools.make_tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve")
    hf = make_tiny_checkpoint(str(root / "hf"), seed=7)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (62, 90, 3), dtype=np.uint8))
    path = str(root / "pic.png")
    img.save(path)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(root / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mindspeed_ms.inference.serve", "--load", hf, "--host", "127.0.0.1",
                             "--port", str(port), "--served-model-name", MODEL, "--max-queue", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"server exited: {open(root / 'server.log').read()[-2000:]}"
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not come up within 180 s"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield {"base": base, "client": client, "hf": hf, "path": path, "image": img, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def _data_url(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ask(url, text="What colour is the shape?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _alive(server):
    assert server["proc"].poll() is None
    assert httpx.get(server["base"] + "/health", timeout=10).json()["status"] == "ok"


def _stream_text(server, **kw):
    chunks = list(server["client"].chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), finish


def test_models_and_health(server):
    assert [m.id for m in server["client"].models.list().data] == [MODEL]
    h = httpx.get(server["base"] + "/health", timeout=10).json()
    assert h["model"] == MODEL and h["max_queue"] == 2 and h["max_batch_size"] == 4


def test_picture_plain_stream_and_generate_agree(server):
    from mindspeed_ms.inference.prompt import PromptBuilder
    from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration

    c = server["client"]
    kw = dict(model=MODEL, messages=_ask(_data_url(server["image"])), max_tokens=12, temperature=0)
    plain = c.chat.completions.create(**kw)
    text = plain.choices[0].message.content
    streamed, finish = _stream_text(server, **kw)
    assert text and streamed == text
    assert finish == [plain.choices[0].finish_reason]
    # model.generate on the same prompt (the chat template and pre-resize of training)
    model = Qwen2VLForConditionalGeneration.from_pretrained(server["hf"])
    builder = PromptBuilder(server["hf"])
    batch = builder.batch([builder.build([{"role": "user", "content": "What colour is the shape?"}],
                                         [server["image"]])])
    ids = model.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=[151645, 151643],
                         pad_token_id=builder.pad_id)
    new = ids[0, batch["input_ids"].shape[1]:].tolist()
    assert builder.decode(new) == text
    assert plain.usage.prompt_tokens == batch["input_ids"].shape[1]
    assert plain.usage.completion_tokens == len(new)


def test_local_path_stop_strings_and_seeded_sampling(server):
    c = server["client"]
    kw = dict(model=MODEL, messages=_ask(_data_url(server["image"])), max_tokens=12, temperature=0)
    text = c.chat.completions.create(**kw).choices[0].message.content
    # the same picture as a local file path
    by_path = c.chat.completions.create(**dict(kw, messages=_ask(server["path"])))
    assert by_path.choices[0].message.content == text
    # stop: the answer is cut before the stop string, plain and streamed alike
    words = text.split()
    stop = words[len(words) // 2]
    cut = c.chat.completions.create(**dict(kw, stop=[stop])).choices[0]
    assert cut.finish_reason == "stop" and stop not in cut.message.content
    assert cut.message.content == text[:text.find(stop)].strip()
    assert _stream_text(server, **dict(kw, stop=[stop]))[0] == cut.message.content
    # sampling with a seed is reproducible
    s = dict(kw, temperature=1.3, top_p=0.9, seed=11)
    assert c.chat.completions.create(**s).choices[0].message.content == \
        c.chat.completions.create(**s).choices[0].message.content


def test_bad_requests_get_400_404_and_the_server_stays_up(server):
    c, base = server["client"], server["base"]
    r = httpx.post(base + "/v1/chat/completions", content=b'{"model": "tiny-vl", "messages": [', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    _alive(server)
    garbage = "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode()
    with pytest.raises(openai.BadRequestError, match="unreadable image"):
        c.chat.completions.create(model=MODEL, messages=_ask(garbage), max_tokens=4)
    _alive(server)
    with pytest.raises(openai.BadRequestError, match="not found"):
        c.chat.completions.create(model=MODEL, messages=_ask("/no/such/picture.png"), max_tokens=4)
    _alive(server)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-4o", messages=_ask(server["path"]), max_tokens=4)
    _alive(server)
    with pytest.raises(openai.BadRequestError, match="tools"):
        c.chat.completions.create(model=MODEL, messages=_ask(server["path"]), max_tokens=4,
                                  tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="last message must be a user"):
        c.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"},
                                                                        {"role": "assistant", "content": "hello"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model=MODEL, messages=_ask(server["path"]), max_tokens=10 ** 6)
    _alive(server)
    ok = c.chat.completions.create(model=MODEL, messages=_ask(server["path"]), max_tokens=3, temperature=0)
    assert ok.choices[0].message.content is not None


def _hold_worker(server):
    """A long streamed request that the worker has started (its role chunk came back)."""
    long = dict(model=MODEL, messages=_ask(server["path"]), max_tokens=2000, temperature=0,
                extra_body={"min_tokens": 2000})
    running = server["client"].chat.completions.create(stream=True, **long)
    next(iter(running))
    return running, long


def _wait_idle(server):
    deadline = time.time() + 60
    while True:
        h = httpx.get(server["base"] + "/health", timeout=10).json()
        if not h["busy"] and h["queued"] == 0:
            return h
        assert time.time() < deadline, f"the server stayed busy after its clients left: {h}"
        time.sleep(0.3)


def test_full_queue_gets_503_then_recovers(server):
    c, base = server["client"], server["base"]
    running, long = _hold_worker(server)
    queued = [c.chat.completions.create(stream=True, **long) for _ in range(2)]  # the queue holds 2
    statuses = []
    for _ in range(3):
        r = httpx.post(base + "/v1/chat/completions", json={"model": MODEL, "messages": _ask(server["path"]),
                                                            "max_tokens": 2}, timeout=30)
        statuses.append(r.status_code)
        assert "busy" in r.json()["error"]["message"]
    assert statuses == [503, 503, 503]
    _alive(server)
    # clients that go away stop their generation: the server is free again
    for s in [running] + queued:
        s.close()
    _wait_idle(server)
    ok = c.chat.completions.create(model=MODEL, messages=_ask(server["path"]), max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_waiting_greedy_requests_run_as_one_batch(server):
    import threading

    c = server["client"]
    other = Image.fromarray(np.random.default_rng(5).integers(0, 255, (120, 40, 3), dtype=np.uint8))
    asks = [dict(model=MODEL, messages=_ask(server["path"]), max_tokens=6, temperature=0),
            dict(model=MODEL, messages=_ask(_data_url(other), "Describe it in detail."), max_tokens=9,
                 temperature=0, stop=["zzz"])]
    alone = [c.chat.completions.create(**a).choices[0].message.content for a in asks]
    running, _ = _hold_worker(server)
    before = httpx.get(server["base"] + "/health", timeout=10).json()
    got = [None, None]

    def ask(i):
        got[i] = c.chat.completions.create(**asks[i]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while httpx.get(server["base"] + "/health", timeout=10).json()["queued"] < 2:
        assert time.time() < deadline, "the two requests did not reach the queue"
        time.sleep(0.2)
    running.close()  # the worker is freed and takes both waiting requests at once
    for t in threads:
        t.join(timeout=120)
    after = _wait_idle(server)
    assert got == alone  # a left-padded batch answers each request as it is answered alone
    assert after["served"] - before["served"] == 3 and after["batches"] - before["batches"] == 2


def test_taken_port_and_bad_flags_are_one_line_errors(server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-m", "mindspeed_ms.inference.serve", "--load", server["hf"], "--port",
                            str(port)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"serve: error: --host 127.0.0.1 --port {port}")
    r = subprocess.run([sys.executable, "-m", "mindspeed_ms.inference.serve", "--load", server["hf"],
                        "--max-batch-size", "0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "--max-batch-size must be >= 1" in r.stderr


def test_worker_survives_settings_it_refuses(server):
    """In process: a checkpoint whose generation_config.json asks for what generate refuses gets 400 with the
    reason from the worker, and the worker goes on serving (greedy requests set temperature 0); one
    that asks for beam search is answered with model.generate's beams, plain and streamed."""
    from fastapi.testclient import TestClient

    from mindspeed_ms.inference import chat, serve

    loaded, builder = chat.load_from_args(chat.build_parser().parse_args(["--load", server["hf"]]))
    loaded.model.generation_config = {"no_repeat_ngram_size": 3}
    engine = serve.Engine(loaded.model, builder, max_queue=2, max_batch=2)
    client = TestClient(serve.create_app(engine, MODEL))
    body = {"model": MODEL, "messages": _ask(server["path"]), "max_tokens": 2}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "no_repeat_ngram_size" in r.json()["error"]["message"]
    loaded.model.generation_config = None
    r = client.post("/v1/chat/completions", json=dict(body, temperature=0))
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert client.get("/health").json()["served"] == 2
    # a checkpoint that asks for beam search: the request runs alone through model.generate's beams
    loaded.model.generation_config = {"num_beams": 2}
    body = dict(body, temperature=0, max_tokens=5)
    r = client.post("/v1/chat/completions", json=body)
    prompt = builder.batch([builder.build([{"role": "user", "content": "What colour is the shape?"}],
                                          [server["path"]])])
    ids = loaded.model.generate(**prompt, max_new_tokens=5, do_sample=False, eos_token_id=engine.eos_ids,
                                pad_token_id=builder.pad_id)
    want = builder.decode([t for t in ids[0, prompt["input_ids"].shape[1]:].tolist() if t != builder.pad_id])
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want
    with client.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: {")]
    import json
    assert "".join(json.loads(x[6:])["choices"][0]["delta"].get("content", "") for x in lines
                   if json.loads(x[6:])["choices"]) == want
