"""An OpenAI-compatible chat server for a Qwen2-VL checkpoint.

    python -m mindspeed_ms.inference.serve --load CKPT_OR_HF_DIR [--host 127.0.0.1 --port 8000]

Endpoints: POST /v1/chat/completions (text and image_url parts, `stream: true` as server-sent
events; see `serve_protocol` for the accepted keys), GET /v1/models, GET /health. `--load` takes
what the chat command takes (an HF directory, or a MindSpeed-MM checkpoint with --mm-model and
--tokenizer / --mm-data); prompts are built as in training (the qwen2vl template, MindSpeed-MM's
image pre-resize with --mm-data's limits).

One batch is generated at a time, by one worker thread (the model is not shared between threads);
up to --max-queue further requests wait. Greedy requests that waited together are generated as one
left-padded batch (--max-batch-size); a sampled request runs alone, with its own seed. A full queue
answers 503, a bad request 400 with the reason, an unknown model 404; a client that disconnects has
its generation stopped.
"""
import argparse
import asyncio
import json
import queue
import secrets
import sys
import threading

from mindspeed_ms.help_format import DefaultsHelpFormatter
from mindspeed_ms.inference.serve_protocol import (ApiError, TextStream, chunk_body, completion_body,
                                                   parse_chat_request)


class _Cancelled(Exception):
    pass


class Job:
    """One request on its way through the queue; events go back to the request's event loop."""

    def __init__(self, req, prompt, loop):
        self.req, self.prompt, self.loop = req, prompt, loop
        self.events = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    def emit(self, *event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Engine:
    """The worker thread and its bounded queue. Greedy requests that wait together (same
    min_tokens) are generated as one left-padded batch of up to `max_batch`; a sampled request
    runs alone (its seed is its own)."""

    def __init__(self, model, builder, max_queue, use_cache=True, max_batch=1):
        self.model, self.builder, self.use_cache = model, builder, use_cache
        self.jobs = queue.Queue(maxsize=max_queue)
        self.max_queue, self.max_batch = max_queue, max(1, int(max_batch))
        self.busy = False
        self.served = self.batches = 0
        self._next = None  # a job taken from the queue that did not fit the last batch
        gen = getattr(model, "generation_config", None) or {}
        eos = gen.get("eos_token_id")
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        self.eos_ids = list(dict.fromkeys(list(builder.stop_ids) + [int(e) for e in eos]))
        self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        self._thread.start()

    def submit(self, job):
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(503, f"the server is busy: {self.max_queue} request(s) already wait for the one being "
                                f"generated; retry later") from None

    def _settings(self, job, prompt_len):
        from mindspeed_ms.inference.generation_config import resolve

        r = job.req
        return resolve(getattr(self.model, "generation_config", None),
                       dict(r.sampling, max_new_tokens=r.max_tokens, min_new_tokens=r.min_tokens,
                            eos_token_id=self.eos_ids, pad_token_id=self.builder.pad_id), prompt_len)

    def _greedy(self, job):
        try:
            g = self._settings(job, 1)
            return not g.do_sample and g.num_beams == 1
        except ValueError:  # refused settings: the job runs alone and its client gets the 400
            return False

    def _take(self):
        """The next batch: one job, plus waiting greedy jobs with the same min_tokens."""
        first, self._next = self._next, None
        while first is None or first.cancelled:
            first = self.jobs.get()
        jobs = [first]
        if self.max_batch > 1 and self._greedy(first):
            while len(jobs) < self.max_batch:
                try:
                    j = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if j.cancelled:
                    continue
                if not self._greedy(j) or j.req.min_tokens != first.req.min_tokens:
                    self._next = j
                    break
                jobs.append(j)
        return jobs

    def _loop(self):
        while True:
            try:
                jobs = self._take()
            except Exception:  # never let the worker die: the server would hang
                continue
            self.busy = True
            try:
                self._run(jobs)
            except _Cancelled:
                pass
            except ValueError as e:  # settings the model refuses (e.g. generation_config.json keys)
                for j in jobs:
                    j.emit("error", ApiError(400, str(e)))
            except Exception as e:  # keep serving; the clients get the reason
                for j in jobs:
                    j.emit("error", ApiError(500, f"generation failed: {type(e).__name__}: {e}"))
            finally:
                self.busy = False
                self.batches += 1
                self.served += len(jobs)
                for j in jobs:
                    j.finished = True

    def _run_beams(self, job, batch, stream):
        _beam_text(self, job, batch, stream)

    def _run(self, jobs):
        from mindspeed_ms.inference.generate import generate
        from mindspeed_ms.inference.generation_config import logits_processor
        from mindspeed_ms.inference.sampling import SamplingConfig

        tok = self.builder.tokenizer
        batch = self.builder.batch([j.prompt for j in jobs])
        s = int(batch["input_ids"].shape[1])
        g = self._settings(jobs[0], s)
        g.max_new_tokens = max(j.req.max_tokens for j in jobs)
        seed = jobs[0].req.seed if jobs[0].req.seed is not None else secrets.randbits(31)
        streams = [TextStream(tok, self.eos_ids, j.req.stop) for j in jobs]
        for j in jobs:
            j.emit("start")
        if g.num_beams > 1:  # the checkpoint's generation_config.json asks for beam search: alone, whole
            return self._run_beams(jobs[0], batch, streams[0])

        def row_stops(b, tokens):
            # each row: its text piece by piece, its own stop strings and max_tokens; a row whose
            # client left stops too
            job, stream = jobs[b], streams[b]
            piece = stream.push(tokens[-1])
            if piece:
                job.emit("piece", piece)
            return job.cancelled or stream.hit_stop or len(tokens) >= job.req.max_tokens

        def step(next_ids, live):
            if all(j.cancelled for j in jobs):
                raise _Cancelled()

        generate(self.model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                 batch.get("image_grid_thw"), batch.get("pixel_values_videos"), batch.get("video_grid_thw"),
                 max_new_tokens=g.max_new_tokens,
                 sampling=SamplingConfig(g.do_sample, g.temperature, g.top_p, g.top_k, seed),
                 stop_token_ids=g.eos_token_ids, pad_token_id=g.pad_token_id, use_cache=self.use_cache,
                 process_logits=logits_processor(g, s), stop_check=row_stops, streamer=step)
        for j, stream in zip(jobs, streams):
            if j.cancelled:
                continue
            piece, text = stream.finish()
            ended = stream.hit_stop or (stream.tokens and stream.tokens[-1] in self.eos_ids)
            j.emit("done", piece, text, "stop" if ended else "length", int(len(j.prompt["input_ids"])),
                   len(stream.tokens))


def _beam_text(engine, job, batch, stream):
    """Beam search gives its tokens at the end: the pieces go out together after it."""
    r = job.req
    out = engine.model.generate(**batch, max_new_tokens=r.max_tokens, min_new_tokens=r.min_tokens,
                                eos_token_id=engine.eos_ids, pad_token_id=engine.builder.pad_id, **r.sampling)
    for t in out[0, batch["input_ids"].shape[1]:].tolist():
        piece = stream.push(t)
        if piece:
            job.emit("piece", piece)
        if t in engine.eos_ids or stream.hit_stop:
            break
    piece, text = stream.finish()
    ended = stream.hit_stop or (stream.tokens and stream.tokens[-1] in engine.eos_ids)
    job.emit("done", piece, text, "stop" if ended else "length", int(len(job.prompt["input_ids"])),
             len(stream.tokens))


def _sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(engine, model_name, max_tokens_limit=2048, default_max_tokens=256, max_request_bytes=32 << 20):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="mindspeed-ms chat server", docs_url=None, redoc_url=None)
    max_positions = engine.model.config.text.max_position_embeddings

    def error(e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug must not take the server down
        return error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "busy": engine.busy, "queued": engine.jobs.qsize(),
                "max_queue": engine.max_queue, "max_batch_size": engine.max_batch, "served": engine.served,
                "batches": engine.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "mindspeed-ms"}]}

    async def next_event(job, request):
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled = True
                    raise _Cancelled() from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await request.body()
        try:
            if len(raw) > max_request_bytes:
                raise ApiError(400, f"the request body has {len(raw)} bytes, more than the server's limit "
                                    f"{max_request_bytes} (--max-request-mb)")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}") from None
            req = parse_chat_request(body, model_name, max_tokens_limit, default_max_tokens)
            try:
                prompt = await run_in_threadpool(engine.builder.build, req.messages, req.images, (), req.system)
            except ValueError as e:
                raise ApiError(400, f"cannot build the prompt: {e}", "messages") from None
            n = int(prompt["input_ids"].shape[0])
            if n + req.max_tokens > max_positions:
                raise ApiError(400, f"the prompt has {n} tokens; with max_tokens {req.max_tokens} that exceeds the "
                                    f"model's {max_positions} positions", "max_tokens")
            job = Job(req, prompt, asyncio.get_running_loop())
            engine.submit(job)
        except ApiError as e:
            return error(e)
        if req.stream:
            return StreamingResponse(_stream(job, request), media_type="text/event-stream")
        try:
            while True:
                ev = await next_event(job, request)
                if ev[0] == "error":
                    return error(ev[1])
                if ev[0] == "done":
                    _, _, text, finish, n_prompt, n_new = ev
                    return JSONResponse(completion_body(req, model_name, text, finish, n_prompt, n_new))
        except _Cancelled:
            return JSONResponse({}, status_code=499)

    async def _stream(job, request):
        req = job.req
        try:
            while True:
                ev = await next_event(job, request)
                kind = ev[0]
                if kind == "start":
                    yield _sse(chunk_body(req, model_name, {"role": "assistant", "content": ""}))
                elif kind == "piece":
                    yield _sse(chunk_body(req, model_name, {"content": ev[1]}))
                elif kind == "error":
                    yield _sse(ev[1].body())
                    yield "data: [DONE]\n\n"
                    return
                elif kind == "done":
                    _, piece, _, finish, n_prompt, n_new = ev
                    if piece:
                        yield _sse(chunk_body(req, model_name, {"content": piece}))
                    yield _sse(chunk_body(req, model_name, {}, finish))
                    if req.include_usage:
                        yield _sse(chunk_body(req, model_name, {}, usage={
                            "prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}))
                    yield "data: [DONE]\n\n"
                    return
        except _Cancelled:
            return
        finally:
            job.cancelled = True  # the client went away (or we are done): stop or skip the generation

    return app


def build_parser():
    from mindspeed_ms.inference.chat import add_load_args

    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.inference.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_load_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--served-model-name", help="the model id clients send (default: the --load directory's name)")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait while one is generated; "
                                                            "more get HTTP 503 (default 8)")
    p.add_argument("--max-batch-size", type=int, default=4,
                   help="greedy requests waiting together are generated as one batch of up to this many (default 4)")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens of a request that sets none")
    p.add_argument("--max-request-mb", type=float, default=32, help="largest request body (images included), MB")
    p.add_argument("--no-cache", action="store_true", help="recompute the full sequence each step (slow; a check)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning: errors and the start-up line only)")
    return p


def main(argv=None):
    import os

    a = build_parser().parse_args(argv)
    for flag, value, lo in (("--max-queue", a.max_queue, 0), ("--max-batch-size", a.max_batch_size, 1),
                            ("--max-tokens-limit", a.max_tokens_limit, 1),
                            ("--default-max-tokens", a.default_max_tokens, 1), ("--port", a.port, 0)):
        if value < lo:
            print(f"serve: error: {flag} must be >= {lo}, got {value}", file=sys.stderr)
            return 2
    if a.default_max_tokens > a.max_tokens_limit:
        print(f"serve: error: --default-max-tokens {a.default_max_tokens} exceeds --max-tokens-limit "
              f"{a.max_tokens_limit}", file=sys.stderr)
        return 2
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        print(f"serve: error: the server needs fastapi and uvicorn ({e}); pip install the versions pinned in "
              f"requirements.txt", file=sys.stderr)
        return 1
    from mindspeed_ms.inference.chat import load_from_args

    import socket
    try:  # before the model loads: a taken port is the user's to fix, not a late traceback
        with socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((a.host, a.port))
    except OSError as e:
        print(f"serve: error: --host {a.host} --port {a.port}: cannot listen there ({e.strerror or e}); choose another "
              f"--port or stop the program using it", file=sys.stderr)
        return 1
    try:
        loaded, builder = load_from_args(a)
    except (ValueError, OSError) as e:
        print(f"serve: error: {e}", file=sys.stderr)
        return 1
    name = a.served_model_name or os.path.basename(os.path.normpath(a.load))
    engine = Engine(loaded.model, builder, a.max_queue, use_cache=not a.no_cache, max_batch=a.max_batch_size)
    app = create_app(engine, name, a.max_tokens_limit, a.default_max_tokens, int(a.max_request_mb * (1 << 20)))
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serve: notice: listening on {a.host}: anyone who reaches this address can use the model "
              f"(there is no authentication)", file=sys.stderr)
    print(f"serve: model '{name}' ({loaded.kind}, {loaded.tag}) on http://{a.host}:{a.port}/v1 "
          f"(batches of up to {a.max_batch_size}, queue {a.max_queue})", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
