"""Dataset formats -> aligned samples (MindSpeed-MM's sharegpt / alpaca converters, ranking too).

An aligned sample is {"prompt": [{"role", "content"}...], "response": [...], "system": str,
"images": [paths], "videos": [paths]}; `response` has one message (SFT) or two (chosen, rejected).
Samples that MindSpeed-MM drops (a role in the wrong place, an odd/even message count) raise
`BrokenSample`; the dataset skips and counts them.
"""
import os

from mindspeed_ms.data.template import PROMPT_ROLES, RESPONSE_ROLES


class BrokenSample(ValueError):
    """A sample MindSpeed-MM skips (with a warning) rather than failing the run."""


def find_media(files, dataset_dir, kind=None):
    """Media paths of a sample: joined to `dataset_dir` when that file exists, else as written.
    With `kind` ("image" / "video"), a path found in neither place is an error naming both."""
    if files is None:
        return []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list):
        raise ValueError(f"media column must be a path or a list of paths, got {type(files).__name__}")
    out = []
    for f in files:
        if not isinstance(f, str):
            raise ValueError(f"media path must be a string, got {f!r}")
        joined = os.path.join(dataset_dir, f) if dataset_dir else f
        if os.path.isfile(joined) or os.path.isdir(joined):
            out.append(joined)
        elif kind is None or os.path.isfile(f) or os.path.isdir(f):
            out.append(f)
        else:
            where = (f"{os.path.abspath(joined)} (under basic_parameters.dataset_dir {dataset_dir!r}) nor "
                     if dataset_dir and joined != f else "")
            raise ValueError(f"{kind} file {f!r} not found: neither {where}{os.path.abspath(f)} (the working "
                             f"directory) exists; fix dataset_dir in data.json or the path in the dataset")
    return out


def _get(example, column, what):
    if column not in example:
        raise ValueError(f"column {column!r} ({what}) is missing; set attr.{what} to the right column name")
    return example[column]


def _text(example, column, what):
    """A text column's value ('' when absent or null); anything but a string is an error naming it."""
    value = example.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"column {column!r} (attr.{what}) must hold text, got {type(value).__name__} {value!r:.80}")
    return value


def _message(msg, attr, where):
    if not isinstance(msg, dict):
        raise BrokenSample(f"{where} is not an object: {msg!r}")
    role, content = msg.get(attr.role_tag), msg.get(attr.content_tag)
    if not isinstance(content, str):
        raise BrokenSample(f"{where} has no string {attr.content_tag!r}")
    if not isinstance(role, str):   # a list or object can be no role tag: the sample is skipped, as a bad tag
        raise BrokenSample(f"{where} has {attr.role_tag!r} {role!r}, not a role tag string")
    return role, content


def align_sharegpt(example, attr):
    tag_map = {attr.user_tag: "user", attr.assistant_tag: "assistant", attr.observation_tag: "observation",
               attr.function_tag: "function", attr.system_tag: "system"}
    tag_map.pop(None, None)
    messages = _get(example, attr.messages, "messages")
    if not isinstance(messages, list):
        raise BrokenSample(f"{attr.messages!r} is not a list of messages")
    system = ""
    if attr.system_tag and messages and isinstance(messages[0], dict) and messages[0].get(attr.role_tag) == attr.system_tag:
        system = _message(messages[0], attr, "message 0")[1]
        messages = messages[1:]
    elif attr.system:
        system = _text(example, attr.system, "system")
    aligned = []
    for i, msg in enumerate(messages):
        role, content = _message(msg, attr, f"message {i}")
        role = tag_map.get(role)
        accepted = PROMPT_ROLES if i % 2 == 0 else RESPONSE_ROLES
        if role not in accepted:
            raise BrokenSample(f"message {i} has role {msg.get(attr.role_tag)!r} where a "
                               f"{'user/observation' if i % 2 == 0 else 'assistant/function'} role is expected")
        aligned.append({"role": role, "content": content})
    if attr.ranking:
        if len(aligned) % 2 == 0:
            raise BrokenSample(f"a ranking sample needs an odd number of messages (ending with the prompt), got {len(aligned)}")
        pair = []
        for col in (attr.chosen, attr.rejected):
            role, content = _message(_get(example, col, "chosen" if col == attr.chosen else "rejected"), attr, col)
            if tag_map.get(role) not in RESPONSE_ROLES:
                raise BrokenSample(f"{col} has role {role!r}, expected the assistant tag {attr.assistant_tag!r}")
            pair.append({"role": tag_map[role], "content": content})
        return {"prompt": aligned, "response": pair, "system": system}
    if not aligned or len(aligned) % 2:
        raise BrokenSample(f"a conversation needs an even, non-zero number of messages, got {len(aligned)}")
    return {"prompt": aligned[:-1], "response": aligned[-1:], "system": system}


def align_alpaca(example, attr):
    prompt = []
    if attr.history and isinstance(example.get(attr.history), list):
        for old in example[attr.history]:
            if not (isinstance(old, (list, tuple)) and len(old) == 2):
                raise BrokenSample(f"{attr.history!r} must hold [prompt, response] pairs")
            if not all(isinstance(t, str) for t in old):
                raise BrokenSample(f"{attr.history!r} must hold [prompt, response] string pairs")
            prompt += [{"role": "user", "content": old[0]}, {"role": "assistant", "content": old[1]}]
    query = [_text(example, c, what) for c, what in ((attr.prompt, "prompt"), (attr.query, "query"))
             if c and example.get(c)]
    prompt.append({"role": "user", "content": "\n".join(query)})
    if attr.ranking:
        c, r = example.get(attr.chosen), example.get(attr.rejected)
        if not (isinstance(c, str) and isinstance(r, str)):
            raise BrokenSample(f"ranking alpaca sample needs string {attr.chosen!r} and {attr.rejected!r}")
        response = [{"role": "assistant", "content": c}, {"role": "assistant", "content": r}]
    else:
        out = example.get(attr.response)
        if not isinstance(out, str):
            raise BrokenSample(f"alpaca sample has no string {attr.response!r}")
        response = [{"role": "assistant", "content": out}]
    system = _text(example, attr.system, "system") if attr.system else ""
    return {"prompt": prompt, "response": response, "system": system}


def align_example(example, attr, dataset_dir):
    """One raw JSON record -> aligned sample (see module docstring)."""
    fn = align_sharegpt if attr.formatting == "sharegpt" else align_alpaca
    out = fn(example, attr)
    out["images"] = find_media(example.get(attr.images), dataset_dir, "image") if attr.images else []
    out["videos"] = find_media(example.get(attr.videos), dataset_dir, "video") if attr.videos else []
    return out
