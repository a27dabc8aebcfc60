"""The OpenAI chat-completions protocol of `inference.serve`: a request body -> a checked
`ChatRequest` (or an `ApiError` with the HTTP status and the reason), and the response objects.

Accepted body keys: `model`, `messages` (roles system/user/assistant; content a string or a list
of `{"type": "text", "text"}` and `{"type": "image_url", "image_url": {"url"}}` parts, the url a
`data:` URL or a local file path / `file://` URL), `max_tokens` / `max_completion_tokens`,
`temperature` (0 = greedy; absent = the checkpoint's generation_config.json), `top_p`, `stop`
(a string or up to 4), `seed`, `stream`, `stream_options`, `n` (1 only), `user`, and vLLM's
`top_k` and `min_tokens`. Any other key is refused with 400, as OpenAI does.
"""
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

from mindspeed_ms.data.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

KNOWN_KEYS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop",
              "seed", "stream", "stream_options", "n", "user", "min_tokens", "frequency_penalty",
              "presence_penalty", "logprobs"}
MAX_STOP = 4


class ApiError(Exception):
    """An HTTP error answer: status, message, and the offending field (`param`) when there is one."""

    def __init__(self, status, message, param=None, kind=None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or {400: "invalid_request_error", 404: "not_found_error",
                             503: "server_overloaded"}.get(status, "server_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class ChatRequest:
    messages: List[dict]                # user/assistant turns, content with <image> tags
    images: List[object]                # PIL images in tag order
    system: Optional[str]
    max_tokens: int
    min_tokens: int = 0
    sampling: dict = field(default_factory=dict)   # generate() keywords (do_sample, temperature, ...)
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _number(body, key, lo=None, hi=None, integer=False):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"'{key}' must be in [{lo}, {hi}], got {v}", key)
    return v


def _load_image_url(url, where):
    from mindspeed_ms.data.image_io import MediaError, load_image
    from mindspeed_ms.data.media_url import decode_data_url

    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{where}: image_url.url must be a non-empty string", "messages")
    try:
        if url.startswith("data:"):
            return load_image(decode_data_url(url))
        if url.startswith(("http://", "https://")):
            raise ApiError(400, f"{where}: remote image URLs are not fetched by this server; send the image as a "
                                f"data URL (data:image/png;base64,...) or a local file path", "messages")
        path = url[len("file://"):] if url.startswith("file://") else url
        if not os.path.isfile(path):
            raise ApiError(400, f"{where}: image file not found: {path}", "messages")
        return load_image(path)
    except (MediaError, ValueError) as e:
        if isinstance(e, ApiError):
            raise
        raise ApiError(400, f"{where}: unreadable image: {e}", "messages") from None


def _content(msg, i, images):
    """A message's content as text with <image> tags; images appended to `images`."""
    c = msg.get("content")
    if isinstance(c, str):
        if IMAGE_PLACEHOLDER in c or VIDEO_PLACEHOLDER in c:
            raise ApiError(400, f"messages[{i}]: literal {IMAGE_PLACEHOLDER}/{VIDEO_PLACEHOLDER} tags are not accepted "
                                f"in text; send images as image_url parts", "messages")
        return c
    if c is None and msg.get("role") == "assistant":
        return ""
    if not isinstance(c, list):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", "messages")
    text = []
    for j, part in enumerate(c):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            t = part.get("text")
            if not isinstance(t, str):
                raise ApiError(400, f"{where}: a text part needs a 'text' string", "messages")
            if IMAGE_PLACEHOLDER in t or VIDEO_PLACEHOLDER in t:
                raise ApiError(400, f"{where}: literal {IMAGE_PLACEHOLDER}/{VIDEO_PLACEHOLDER} tags are not accepted "
                                    f"in text; send images as image_url parts", "messages")
            text.append(t)
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            images.append(_load_image_url(url, where))
            text.append(IMAGE_PLACEHOLDER)
        else:
            raise ApiError(400, f"{where}: part type {kind!r} is not supported (use 'text' or 'image_url')", "messages")
    return "".join(text)


def parse_chat_request(body, model_name, max_tokens_limit, default_max_tokens):
    """Check a /v1/chat/completions body; returns a ChatRequest or raises ApiError (400/404)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_KEYS)
    if unknown:
        raise ApiError(400, f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{model_name}' (GET /v1/models)",
                       "model", "model_not_found")
    for key, neutral in (("frequency_penalty", 0), ("presence_penalty", 0), ("logprobs", False)):
        if body.get(key) not in (None, neutral):
            raise ApiError(400, f"'{key}' is not supported by this server (only {neutral!r})", key)
    _number(body, "n", 1, 1, integer=True)  # one choice per request
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    images, turns, system = [], [], None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", "messages")
        role = m.get("role")
        if role == "system" or role == "developer":
            if turns or system is not None:
                raise ApiError(400, f"messages[{i}]: a system message may only come first", "messages")
            before = len(images)
            system = _content(m, i, images)
            if len(images) != before:
                raise ApiError(400, f"messages[{i}]: images are not accepted in the system message", "messages")
            continue
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}]: role {role!r} is not supported (system, user, assistant)", "messages")
        want = "user" if len(turns) % 2 == 0 else "assistant"
        if role != want:
            raise ApiError(400, f"messages[{i}]: expected a {want} message (turns alternate user/assistant, "
                                f"starting with user)", "messages")
        turns.append({"role": role, "content": _content(m, i, images)})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message (the one to answer)", "messages")
    max_tokens = _number(body, "max_completion_tokens", 1, max_tokens_limit, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, max_tokens_limit, integer=True)
    if max_tokens is None:
        max_tokens = default_max_tokens
    min_tokens = _number(body, "min_tokens", 0, max_tokens, integer=True) or 0
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    top_k = _number(body, "top_k", -1, None, integer=True)
    seed = _number(body, "seed", integer=True)
    sampling = {}
    if temperature is not None:
        sampling["do_sample"] = temperature > 0
        if temperature > 0:
            sampling["temperature"] = float(temperature)
    if top_p is not None:
        if top_p <= 0:
            raise ApiError(400, "'top_p' must be > 0", "top_p")
        sampling["top_p"] = float(top_p)
    if top_k is not None:
        sampling["top_k"] = 0 if top_k == -1 else top_k  # vLLM: -1 = off
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    return ChatRequest(messages=turns, images=images, system=system, max_tokens=int(max_tokens),
                       min_tokens=int(min_tokens), sampling=sampling, seed=seed, stop=stop, stream=stream,
                       include_usage=bool(opts.get("include_usage", False)))


def completion_body(req: ChatRequest, model_name, text, finish_reason, prompt_tokens, completion_tokens):
    return {"id": req.id, "object": "chat.completion", "created": req.created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def chunk_body(req: ChatRequest, model_name, delta, finish_reason=None, usage=None):
    body = {"id": req.id, "object": "chat.completion.chunk", "created": req.created, "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    return body


class TextStream:
    """Token ids -> the answer text, piece by piece, such that the pieces joined equal the final text.

    The final text is the decoded tokens (eos ids and special tokens dropped), cut before the first
    stop string, with surrounding whitespace stripped (as the chat command prints it). While
    generating, a tail that could still change is held back: an incomplete UTF-8 character,
    trailing whitespace, and a prefix of a stop string."""

    def __init__(self, tokenizer, eos_ids, stops):
        self.tokenizer, self.eos, self.stops = tokenizer, set(eos_ids), list(stops)
        self.tokens, self.sent = [], ""
        self.hit_stop = False

    def _text(self):
        text = self.tokenizer.decode([t for t in self.tokens if t not in self.eos], skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stops if s in text]
        if cuts:
            self.hit_stop = True
            text = text[:min(cuts)]
        return text

    def push(self, token):
        """Add one token; returns the text that can be sent now ("" if none)."""
        self.tokens.append(int(token))
        text = self._text().lstrip()
        if not self.hit_stop:
            hold = 0
            for s in self.stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
            text = text[:len(text) - hold]
        text = text.rstrip().rstrip("\ufffd")
        if not text.startswith(self.sent):
            return ""  # decoding moved earlier text (rare): wait for the final text
        piece, self.sent = text[len(self.sent):], text if len(text) > len(self.sent) else self.sent
        return piece

    def finish(self):
        """(last piece, the whole text)."""
        text = self._text().strip()
        if not text.startswith(self.sent):
            # cannot happen with prefix-stable decoding; the pieces already sent stand
            return "", self.sent
        piece, self.sent = text[len(self.sent):], text
        return piece, text
