"""``python -m auto_convert launch IN.sh [-o OUT.sh | --in-place]`` and ``python -m auto_convert code ...``."""
import sys

_USAGE = """usage: python -m auto_convert {launch,code} ...
  launch IN.sh [-o OUT.sh | --in-place]   torchrun launch script -> msrun script for mindspeed-ms
  code SRC_DIR OUT_DIR [--allow-partial]  PyTorch-API code -> MindSpore code (same as python -m auto_convert.code)"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "launch":
        from auto_convert.launch import main as launch_main
        return launch_main(rest)
    if cmd == "code":
        from auto_convert.code.cli import main as code_main
        return code_main(rest)
    print(f"python -m auto_convert: unknown command '{cmd}'\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
