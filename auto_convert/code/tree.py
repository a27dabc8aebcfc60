"""Convert a directory of PyTorch-API Python files into a MindSpore one."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from auto_convert.code.mapping import Mapping
from auto_convert.code.rewriter import Unmapped, convert_source


@dataclass
class TreeReport:
    converted: list[str] = field(default_factory=list)  # relative paths of rewritten .py files
    copied: list[str] = field(default_factory=list)     # other files, copied unchanged
    unmapped: list[Unmapped] = field(default_factory=list)


def convert_tree(src_dir: str, out_dir: str, mapping: Mapping) -> TreeReport:
    """Rewrite every ``*.py`` under ``src_dir`` into the same place under ``out_dir``; copy the
    rest.  Unmapped APIs are listed with paths relative to ``src_dir``'s parent as given."""
    src = os.path.abspath(src_dir)
    out = os.path.abspath(out_dir)
    if not os.path.isdir(src):
        raise ValueError(f"source directory {src_dir} does not exist")
    if out == src or out.startswith(src + os.sep):
        raise ValueError(f"output directory {out_dir} must not be the source directory or inside it")
    report = TreeReport()
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)
            target = os.path.join(out, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not name.endswith(".py"):
                shutil.copy2(path, target)
                report.copied.append(rel)
                continue
            with open(path, encoding="utf-8") as f:
                code = f.read()
            shown = os.path.join(src_dir, rel)
            new, unmapped = convert_source(code, shown, mapping)
            with open(target, "w", encoding="utf-8") as f:
                f.write(new)
            report.converted.append(rel)
            report.unmapped += unmapped
    return report
