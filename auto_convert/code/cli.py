"""``python -m auto_convert.code SRC_DIR OUT_DIR [--allow-partial]``."""
from __future__ import annotations

import argparse
import json
import sys

from auto_convert.code.mapping import check_mapping, load_mapping
from auto_convert.code.tree import convert_tree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m auto_convert.code",
        description="Rewrite PyTorch-API Python code (modules, losses, collators, transforms) to MindSpore "
                    "(mindspore.mint / mint.nn / mint.nn.functional / ops) from the API mapping table.")
    p.add_argument("src_dir", nargs="?", help="directory of PyTorch-API .py files")
    p.add_argument("out_dir", nargs="?", help="where the MindSpore version is written (same layout)")
    p.add_argument("--allow-partial", action="store_true",
                   help="exit 0 even when some APIs could not be mapped (they are still reported)")
    p.add_argument("--mapping", help="API mapping JSON (default: the one shipped with auto_convert)")
    p.add_argument("--report", help="also write the unmapped APIs to this JSON file")
    p.add_argument("--check-mapping", action="store_true",
                   help="run every mapping entry's MindSpore target on this machine and list the failures")
    a = p.parse_args(argv)
    try:
        mapping = load_mapping(a.mapping)
    except ValueError as e:
        print(f"auto_convert.code: {e}", file=sys.stderr)
        return 2
    if a.check_mapping:
        failures = check_mapping(mapping)
        for name, err in failures:
            print(f"  {name}: {err}", file=sys.stderr)
        n = len(mapping.apis) + len(mapping.tensor_methods)
        print(f"auto_convert.code: {n - len(failures)}/{n} mapping entries run here")
        return 1 if failures else 0
    if not a.src_dir or not a.out_dir:
        p.error("SRC_DIR and OUT_DIR are required (or --check-mapping)")
    try:
        report = convert_tree(a.src_dir, a.out_dir, mapping)
    except ValueError as e:
        print(f"auto_convert.code: {e}", file=sys.stderr)
        return 2
    if a.report:
        with open(a.report, "w", encoding="utf-8") as f:
            json.dump([u.__dict__ for u in report.unmapped], f, indent=1)
    for u in report.unmapped:
        print(f"  {u}", file=sys.stderr)
    files_with = len({u.path for u in report.unmapped})
    print(f"auto_convert.code: {len(report.converted)} file(s) converted, {len(report.copied)} copied to {a.out_dir}; "
          f"{len(report.unmapped)} unmapped API use(s) in {files_with} file(s)")
    if report.unmapped and not a.allow_partial:
        print("auto_convert.code: unmapped APIs left (listed above); fix them or pass --allow-partial", file=sys.stderr)
        return 1
    return 0
