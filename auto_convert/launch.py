"""Rewrite a MindSpeed-MM torch-backend launch script so that it runs mindspeed-ms under msrun.

What changes (everything else, comments and layout included, is kept byte for byte):
  * ``torchrun`` (or ``python -m torch.distributed.run|launch``) -> ``msrun``;
  * launcher options, inline or in the variable the command expands (``DISTRIBUTED_ARGS="..."``):
    ``--nproc_per_node N`` -> ``--local_worker_num N``, ``--nnodes M`` -> ``--worker_num N*M``
    (``$WORLD_SIZE`` when the script defines it from those two variables), ``--node_rank``,
    ``--master_addr``, ``--master_port`` kept, ``--log_dir msrun_log --join=True --bind_core=True``
    added;
  * the entry script (``pretrain_vlm.py``, ``posttrain_qwen2vl_dpo.py``) mapped to the repository
    root, and ``--ai-framework mindspore`` added to its arguments;
  * relative ``examples/qwen2vl/`` paths -> ``examples/mindspore/qwen2vl/``.
Converting a converted script changes nothing.  A launch line that cannot be mapped (an unknown
torchrun option, an unknown entry script, an undefined variable) is reported with its line number
and nothing is written.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

# torchrun option (both spellings torchrun accepts) -> msrun option.  --nnodes is special: msrun
# wants the total number of workers, not the number of nodes.
_TORCHRUN_TO_MSRUN = {
    "nproc_per_node": "local_worker_num",
    "nproc-per-node": "local_worker_num",
    "node_rank": "node_rank",
    "node-rank": "node_rank",
    "master_addr": "master_addr",
    "master-addr": "master_addr",
    "master_port": "master_port",
    "master-port": "master_port",
}
_NNODES = ("nnodes",)
# msrun's own options (a half-converted variable may already hold them); those without a value
# are written with '=' in scripts (--bind_core=True, --join=True).
_MSRUN_OPTIONS = {"local_worker_num", "worker_num", "node_rank", "master_addr", "master_port",
                  "log_dir", "join", "cluster_time_out", "bind_core", "sim_level", "rank_table_file"}
# What msrun needs that torchrun did not have: logs per worker (MindSpeed-MM's msrun scripts use
# this directory); --join=True because torchrun blocks until training ends while msrun without it
# returns as soon as the workers are spawned, so the script's `| tee logs/...` would hold only the
# spawn lines and its STEP_TIME / throughput tail would run before the first iteration (a
# deliberate addition to MindSpeed-MM's msrun line; our own example scripts do the same); core
# binding as the MindSpeed-MM msrun scripts do (msrun skips it where it cannot bind, e.g. fewer
# cores than workers, so it is harmless on CPU).
_ADDED_LAUNCHER_OPTIONS = (("log_dir", "--log_dir msrun_log"), ("join", "--join=True"),
                           ("bind_core", "--bind_core=True"))
# MindSpeed-MM entry scripts and where they live in this repository (the root, as in MindSpeed-MM).
ENTRY_SCRIPTS = {"pretrain_vlm.py": "pretrain_vlm.py",
                 "posttrain_qwen2vl_dpo.py": "posttrain_qwen2vl_dpo.py"}
AI_FRAMEWORK_ARG = "--ai-framework mindspore"

_LAUNCHER_RE = re.compile(
    r"(?:(?<=^)|(?<=[\s;&|(]))(?P<launcher>torchrun|msrun|python3?\s+-m\s+torch\.distributed\.(?:run|launch))(?=\s|$)")
_ASSIGN_RE = re.compile(r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")
_VARREF_RE = re.compile(r"^\"?\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))\"?$")
# Relative paths into MindSpeed-MM's torch examples; absolute paths point into another tree.
_EXAMPLES_RE = re.compile(r"(?<![\w/.-])(?P<dot>\./)?examples/qwen2vl/")
_SHELL_STOP = re.compile(r"^(?:\||\|\||&&|;|&|\d*>.*|&>.*|<.*|\d*<.*)$")


class LaunchConversionError(ValueError):
    """The script holds a launch line that cannot be mapped; ``problems`` lists (line, message)."""

    def __init__(self, source: str, problems: list[tuple[int, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}:{line}: {msg}" for line, msg in problems))


@dataclass
class LaunchResult:
    text: str
    changes: list[str] = field(default_factory=list)  # human-readable, one per edit, with line


@dataclass
class _Tok:
    line: int  # 0-based physical line
    start: int
    end: int
    text: str


@dataclass
class _Region:
    """The value of ``NAME=...`` (quoted values may span lines)."""
    name: str
    line: int
    end_line: int
    tokens: list[_Tok]
    raw: str


def _split_tokens(line: str, lineno: int, start: int, end: int) -> list[_Tok]:
    """Whitespace-separated words of ``line[start:end]``, stopping at a comment, skipping the
    continuation backslash.  Quotes inside a word stay part of it."""
    toks = []
    for m in re.finditer(r"\S+", line[start:end]):
        text = m.group(0)
        if text.startswith("#"):
            break
        if text == "\\":
            continue
        toks.append(_Tok(lineno, start + m.start(), start + m.end(), text))
    return toks


def _closing_quote(lines: list[str], line: int, col: int, quote: str) -> tuple[int, int] | None:
    """Position of the quote closing the one opened just before (line, col)."""
    i, j = line, col
    while i < len(lines):
        s = lines[i]
        while j < len(s):
            if s[j] == "\\" and quote == '"':
                j += 2
                continue
            if s[j] == quote:
                return i, j
            j += 1
        i, j = i + 1, 0
    return None


def _find_regions(lines: list[str]) -> tuple[list[_Region], set[int]]:
    """All variable assignments, and the set of lines that lie inside multi-line quoted values."""
    regions, inside = [], set()
    i = 0
    while i < len(lines):
        m = _ASSIGN_RE.match(lines[i])
        if not m or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        vstart = m.start("value")
        value = m.group("value")
        if value[:1] in ('"', "'"):
            close = _closing_quote(lines, i, vstart + 1, value[0])
            if close is None:
                i += 1
                continue
            end_line, end_col = close
            toks = []
            for k in range(i, end_line + 1):
                a = vstart + 1 if k == i else 0
                b = end_col if k == end_line else len(lines[k])
                toks += _split_tokens(lines[k], k, a, b)
                if k != i:
                    inside.add(k)
            raw = "\n".join(lines[i:end_line + 1])
            regions.append(_Region(m.group("name"), i, end_line, toks, raw))
            i = end_line + 1
        else:
            toks = _split_tokens(lines[i], i, vstart, len(lines[i]))[:1]
            regions.append(_Region(m.group("name"), i, i, toks, lines[i]))
            i += 1
    return regions, inside


def _continues(line: str) -> bool:
    return line.rstrip().endswith("\\") and not line.rstrip().endswith("\\\\")


def _var_name(text: str) -> str | None:
    m = _VARREF_RE.match(text)
    return (m.group("braced") or m.group("plain")) if m else None


def _last_assignment(regions: list[_Region], name: str, before_line: int) -> _Region | None:
    found = None
    for r in regions:
        if r.name == name and r.line < before_line:
            found = r
    return found


class _Editor:
    """Collects span replacements and new lines, then applies them without disturbing the rest."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.spans: dict[int, list[tuple[int, int, str]]] = {}
        self.after: dict[int, list[str]] = {}
        self.before: dict[int, list[str]] = {}

    def replace(self, tok: _Tok, text: str):
        self.spans.setdefault(tok.line, []).append((tok.start, tok.end, text))

    def insert_at(self, line: int, col: int, text: str):
        self.spans.setdefault(line, []).append((col, col, text))

    def apply(self) -> list[str]:
        out = []
        for i, line in enumerate(self.lines):
            for start, end, text in sorted(set(self.spans.get(i, [])), key=lambda s: (s[0], s[1]), reverse=True):
                line = line[:start] + text + line[end:]
            out += self.before.get(i, [])
            out.append(line)
            out += self.after.get(i, [])
        return out


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _append_args(ed: _Editor, lines: list[str], first: _Tok, last: _Tok, args: list[str]):
    """Add ``args`` after the argument that spans tokens ``first``..``last``: one per new line when
    that argument begins its own line (the ``--opt value \\`` layout of MindSpeed-MM scripts),
    otherwise on the same line."""
    line = lines[last.line]
    if first.line == last.line and line[: first.start].strip() == "":
        indent = _indent_of(line)
        rest = line[last.end:]
        # The original line keeps its argument and gets a continuation; the last new line takes
        # over whatever followed (a continuation backslash, a closing quote).
        ed.spans.setdefault(last.line, []).append((last.end, len(line), " \\"))
        new = [f"{indent}{a} \\" for a in args[:-1]] + [f"{indent}{args[-1]}{rest}"]
        ed.after.setdefault(last.line, []).extend(new)
    else:
        ed.insert_at(last.line, last.end, "".join(" " + a for a in args))


@dataclass
class _LauncherItem:
    name: str       # option name without dashes
    name_tok: _Tok
    value_tok: _Tok | None
    equals: bool    # written --opt=value


def _parse_launcher_tokens(tokens: list[_Tok], where: str, problems: list[tuple[int, str]]) -> list[_LauncherItem]:
    items, k = [], 0
    while k < len(tokens):
        t = tokens[k]
        if not t.text.startswith("--"):
            problems.append((t.line + 1, f"unexpected launcher argument '{t.text}' in {where}: "
                                         "expected --option value"))
            return items
        body = t.text[2:]
        if "=" in body:
            name = body.split("=", 1)[0]
            items.append(_LauncherItem(name, t, None, True))
            k += 1
            continue
        name = body
        value = tokens[k + 1] if k + 1 < len(tokens) and not tokens[k + 1].text.startswith("--") else None
        items.append(_LauncherItem(name, t, value, False))
        k += 2 if value is not None else 1
    return items


def _item_value(item: _LauncherItem) -> str:
    if item.equals:
        return item.name_tok.text.split("=", 1)[1]
    return item.value_tok.text if item.value_tok is not None else ""


def _replace_item(ed: _Editor, item: _LauncherItem, new_name: str, new_value: str | None = None):
    value = _item_value(item) if new_value is None else new_value
    if item.equals:
        ed.replace(item.name_tok, f"--{new_name}={value}")
    else:
        ed.replace(item.name_tok, f"--{new_name}")
        if new_value is not None and item.value_tok is not None:
            ed.replace(item.value_tok, new_value)


def _worker_num(nproc: str, nnodes: str, regions: list[_Region], before_line: int) -> str:
    """msrun's --worker_num for torchrun's (nproc_per_node, nnodes)."""
    if nproc.isdigit() and nnodes.isdigit():
        return str(int(nproc) * int(nnodes))
    ws = _last_assignment(regions, "WORLD_SIZE", before_line)
    names = [_var_name(v) for v in (nproc, nnodes)]
    if ws is not None and all(n and re.search(rf"\${{?{n}\b", ws.raw) for n in names):
        return "$WORLD_SIZE"
    return f"$(({nproc}*{nnodes}))"


def _command_tokens(lines: list[str], line: int, col: int) -> tuple[list[_Tok], int]:
    """Words of the command starting at (line, col) up to a pipe/redirection, across ``\\``
    continuations; also the last physical line of the command."""
    toks, i, c = [], line, col
    while True:
        for t in _split_tokens(lines[i], i, c, len(lines[i])):
            if _SHELL_STOP.match(t.text):
                return toks, i
            toks.append(t)
        if not _continues(lines[i]) or i + 1 >= len(lines):
            return toks, i
        i, c = i + 1, 0


def convert_launch_script(text: str, source: str = "<script>") -> LaunchResult:
    """Convert the text of a launch script; raises LaunchConversionError listing bad lines."""
    trailing_newline = text.endswith("\n")
    lines = text.split("\n")
    if trailing_newline:
        lines = lines[:-1]
    regions, inside = _find_regions(lines)
    ed = _Editor(lines)
    problems: list[tuple[int, str]] = []
    changes: list[str] = []
    converted_vars: set[int] = set()

    for i, line in enumerate(lines):
        if i in inside or line.lstrip().startswith("#"):
            continue
        m = _LAUNCHER_RE.search(line.split(" #", 1)[0])
        if not m:
            continue
        launcher = m.group("launcher")
        toks, _ = _command_tokens(lines, i, m.end())
        is_torch = launcher != "msrun"

        # launcher arguments: up to the entry script
        launcher_tokens: list[tuple[_Tok, _Region | None]] = []
        entry_idx = None
        expects_value = undefined = False
        for k, t in enumerate(toks):
            if t.text.endswith(".py"):
                entry_idx = k
                break
            name = _var_name(t.text)
            # a variable right after "--opt" is that option's value, not a list of options
            if name is not None and not expects_value:
                reg = _last_assignment(regions, name, i)
                if reg is None:
                    problems.append((t.line + 1, f"{launcher} uses ${name}, which the script does not "
                                                 "assign before this line: cannot convert its options"))
                    undefined = True
                    continue
                launcher_tokens += [(vt, reg) for vt in reg.tokens]
            else:
                launcher_tokens.append((t, None))
            expects_value = t.text.startswith("--") and "=" not in t.text and not expects_value
        if undefined:
            continue
        if entry_idx is None:
            problems.append((i + 1, f"{launcher} line without a Python entry script (*.py): cannot convert"))
            continue
        entry = toks[entry_idx]
        program_args = toks[entry_idx + 1:]

        # entry script -> this repository's root
        base = os.path.basename(entry.text.strip("\"'"))
        if base not in ENTRY_SCRIPTS:
            problems.append((entry.line + 1, f"entry script '{entry.text}' is not a mindspeed-ms entry point "
                                             f"(known: {', '.join(sorted(ENTRY_SCRIPTS))})"))
            continue
        if entry.text != ENTRY_SCRIPTS[base]:
            ed.replace(entry, ENTRY_SCRIPTS[base])
            changes.append(f"line {entry.line + 1}: entry script {entry.text} -> {ENTRY_SCRIPTS[base]}")

        if is_torch:
            launcher_tok = _Tok(i, m.start("launcher"), m.end("launcher"), launcher)
            ed.replace(launcher_tok, "msrun")
            changes.append(f"line {i + 1}: {launcher} -> msrun")
            n_before = len(problems)
            items_by_region: list[tuple[_Region | None, list[_LauncherItem]]] = []
            # group launcher tokens by where they come from so each variable is parsed on its own
            groups: list[tuple[_Region | None, list[_Tok]]] = []
            for t, reg in launcher_tokens:
                if groups and groups[-1][0] is reg and reg is not None:
                    groups[-1][1].append(t)
                elif groups and reg is None and groups[-1][0] is None:
                    groups[-1][1].append(t)
                else:
                    groups.append((reg, [t]))
            for reg, group in groups:
                where = f"${reg.name} (line {reg.line + 1})" if reg else f"the {launcher} line"
                items_by_region.append((reg, _parse_launcher_tokens(group, where, problems)))
            all_items = [it for _, its in items_by_region for it in its]
            by_name = {it.name: it for it in all_items}
            nproc_item = by_name.get("nproc_per_node") or by_name.get("nproc-per-node") or by_name.get("local_worker_num")
            for it in all_items:
                if it.name in _MSRUN_OPTIONS or it.name in _TORCHRUN_TO_MSRUN or it.name in _NNODES:
                    continue
                problems.append((it.name_tok.line + 1, f"torchrun option --{it.name} has no msrun equivalent "
                                                       "in mindspeed-ms; remove it (supported: --nproc_per_node, "
                                                       "--nnodes, --node_rank, --master_addr, --master_port)"))
            if nproc_item is None:
                problems.append((i + 1, f"{launcher} without --nproc_per_node: msrun needs the number of "
                                        "workers per node (--local_worker_num)"))
            if len(problems) > n_before:
                continue
            nproc = _item_value(nproc_item)
            for reg, its in items_by_region:
                if reg is not None and id(reg) in converted_vars:
                    continue  # a variable shared with an earlier launch line: already rewritten
                for it in its:
                    if it.name in _TORCHRUN_TO_MSRUN:
                        new = _TORCHRUN_TO_MSRUN[it.name]
                        if new != it.name:
                            _replace_item(ed, it, new)
                            changes.append(f"line {it.name_tok.line + 1}: --{it.name} -> --{new}")
                    elif it.name in _NNODES:
                        nn = _item_value(it)
                        if ":" in nn:
                            problems.append((it.name_tok.line + 1, f"elastic --nnodes {nn} has no msrun "
                                                                   "equivalent: give a fixed node count"))
                            continue
                        wn = _worker_num(nproc, nn, regions, reg.line if reg else i)
                        _replace_item(ed, it, "worker_num", wn)
                        changes.append(f"line {it.name_tok.line + 1}: --nnodes {nn} -> --worker_num {wn}")
            added = [text for name, text in _ADDED_LAUNCHER_OPTIONS if name not in by_name]
            if "nnodes" not in by_name and "worker_num" not in by_name:
                added.insert(0, f"--worker_num {nproc}")
            last_reg, last_items = items_by_region[-1] if items_by_region else (None, [])
            if added:
                if last_items:
                    last = last_items[-1]
                    if last_reg is None or id(last_reg) not in converted_vars:
                        _append_args(ed, lines, last.name_tok, last.value_tok or last.name_tok, added)
                else:
                    # only the launcher word: options go right after it
                    ed.insert_at(i, m.end("launcher"), "".join(" " + a for a in added))
                changes.append(f"line {(last_reg.end_line if last_reg else i) + 1}: added {' '.join(added)}")
            for reg, _ in items_by_region:
                if reg is not None:
                    converted_vars.add(id(reg))

        # --ai-framework mindspore for the entry script (inline or in a variable it expands)
        if not _has_ai_framework(program_args, regions, i):
            anchor = next((t for t in program_args if t.text.startswith("--distributed-backend")), None)
            if anchor is not None and lines[anchor.line].lstrip().startswith(anchor.text) \
                    and anchor.line > 0 and _continues(lines[anchor.line - 1]):
                ed.before.setdefault(anchor.line, []).append(f"{_indent_of(lines[anchor.line])}{AI_FRAMEWORK_ARG} \\")
            elif anchor is not None:
                ed.insert_at(anchor.line, anchor.start, AI_FRAMEWORK_ARG + " ")
            else:
                last = program_args[-1] if program_args else entry
                _append_args(ed, lines, last, last, [AI_FRAMEWORK_ARG])
            changes.append(f"line {i + 1}: added {AI_FRAMEWORK_ARG}")

    if problems:
        raise LaunchConversionError(source, sorted(set(problems)))

    out = ed.apply()
    for k, line in enumerate(out):
        new = _EXAMPLES_RE.sub(lambda mm: (mm.group("dot") or "") + "examples/mindspore/qwen2vl/", line)
        if new != line:
            out[k] = new
            changes.append(f"path examples/qwen2vl/ -> examples/mindspore/qwen2vl/: {new.strip()}")
    return LaunchResult("\n".join(out) + ("\n" if trailing_newline else ""), changes)


def _has_ai_framework(program_args: list[_Tok], regions: list[_Region], before_line: int) -> bool:
    for t in program_args:
        if t.text.startswith("--ai-framework"):
            return True
        name = _var_name(t.text)
        if name is not None:
            reg = _last_assignment(regions, name, before_line)
            if reg is not None and any(vt.text.startswith("--ai-framework") for vt in reg.tokens):
                return True
    return False


def default_output_path(in_path: str) -> str:
    root, ext = os.path.splitext(in_path)
    return f"{root}_ms{ext or '.sh'}"


def convert_launch_file(in_path: str, out_path: str | None = None, in_place: bool = False) -> tuple[str, LaunchResult]:
    """Convert ``in_path``; write to ``out_path`` (default ``<name>_ms.sh``) or over the input."""
    if in_place and out_path:
        raise ValueError("give either -o/--output or --in-place, not both")
    try:
        with open(in_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read launch script {in_path}: {e.strerror}") from e
    result = convert_launch_script(text, source=in_path)
    target = in_path if in_place else (out_path or default_output_path(in_path))
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(result.text)
    shutil.copymode(in_path, tmp)
    os.replace(tmp, target)
    return target, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m auto_convert launch",
                                description="Convert a MindSpeed-MM torchrun launch script to msrun for mindspeed-ms.")
    p.add_argument("script", help="the torch-backend shell script (e.g. examples/qwen2vl/finetune_qwen2vl_7b.sh)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-o", "--output", help="where to write the converted script (default: <name>_ms.sh)")
    g.add_argument("--in-place", action="store_true", help="overwrite the input script")
    p.add_argument("-q", "--quiet", action="store_true", help="do not list the changes")
    a = p.parse_args(argv)
    try:
        target, result = convert_launch_file(a.script, a.output, a.in_place)
    except LaunchConversionError as e:
        print(f"auto_convert launch: {len(e.problems)} line(s) of {e.source} could not be converted; "
              "nothing was written:", file=sys.stderr)
        for line, msg in e.problems:
            print(f"  {e.source}:{line}: {msg}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"auto_convert launch: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        for c in result.changes:
            print(f"  {c}")
        print(f"auto_convert launch: {a.script} -> {target} ({len(result.changes)} change(s))")
    return 0
