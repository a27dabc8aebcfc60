"""mm-convert's output directories: refuse before writing rather than replace what it did not create.

Every conversion records the top-level entries it wrote in a hidden manifest (`.mm-convert.json`)
inside its output directory. A later conversion into the same directory may replace exactly those
entries; anything else there (a training save with iter_* directories, an HF model, unrelated
files) makes the command stop before it writes anything, naming the path. An output directory that
is (or contains) one of the command's sources is refused too: replacing it would destroy the input.
"""
import json
import os

MANIFEST = ".mm-convert.json"


class OutputDirError(ValueError):
    """The output directory of a conversion holds something mm-convert did not write."""


def _real(path) -> str:
    return os.path.realpath(os.path.abspath(str(path)))


def read_manifest(out) -> set:
    """Names mm-convert recorded as its own in `out` (empty when there is no readable manifest)."""
    try:
        with open(os.path.join(str(out), MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
        return {str(n) for n in data.get("entries", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def write_manifest(out, command: str, entries):
    """Record `entries` (top-level names under `out`) as written by `command`; replaced atomically."""
    out = str(out)
    path = os.path.join(out, MANIFEST)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"written_by": f"mm-convert {command}", "entries": sorted(set(entries))}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _is_own_temporary(name: str) -> bool:
    # AtomicTagDir's temporaries of an interrupted conversion: never referenced, left alone
    return name.startswith((".tmp-release-", ".old-release-", ".tmp-iter_", ".old-iter_"))


def check_output_dir(out, flag: str, command: str, sources: dict):
    """Raise OutputDirError unless `out` may receive this conversion's output.

    `sources` maps a flag name (e.g. '--cfg.hf_config.hf_dir') to the path it names. `out` may not
    exist, may be empty, or may hold only entries of an earlier mm-convert run (its manifest)."""
    out_s = str(out)
    real = _real(out_s)
    for src_flag, src in sources.items():
        if src is None:
            continue
        rs = _real(src)
        if rs == real:
            raise OutputDirError(f"{flag} {out_s} is the same directory as {src_flag} {src}: the conversion "
                                 f"would replace its own input; choose a new, empty output directory")
        if rs.startswith(real.rstrip(os.sep) + os.sep):
            raise OutputDirError(f"{flag} {out_s} contains {src_flag} {src}: writing there could replace the "
                                 f"input; choose a new, empty output directory outside it")
    if not os.path.lexists(out_s):
        parent = os.path.dirname(real)
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise OutputDirError(f"{flag} {out_s}: {parent} is a file, not a directory; choose another path")
        return
    if not os.path.isdir(out_s):
        raise OutputDirError(f"{flag} {out_s} is a file, not a directory: give the path of a new or empty "
                             f"directory")
    mine = read_manifest(out_s)
    foreign = sorted(n for n in os.listdir(out_s) if n != MANIFEST and n not in mine and not _is_own_temporary(n))
    if not foreign:
        return
    from .layout import LATEST_FILE
    if command == "hf_to_mm" and (LATEST_FILE in foreign or any(n.startswith("iter_") for n in foreign)):
        latest = ""
        try:
            latest = open(os.path.join(out_s, LATEST_FILE), encoding="utf-8").read().strip()
        except OSError:
            pass
        said = f" ({LATEST_FILE} says {latest})" if latest else ""
        raise OutputDirError(f"{flag} {out_s} is an existing checkpoint directory{said}: hf_to_mm would switch "
                             f"it to 'release' and the next --load would restart from the HF weights; convert "
                             f"into a new, empty directory instead")
    more = f" and {len(foreign) - 1} more entries" if len(foreign) > 1 else ""
    raise OutputDirError(f"{flag} {out_s} already holds {foreign[0]}{more} that mm-convert did not write; "
                         f"nothing was changed: choose a new or empty directory (or move those files away "
                         f"yourself)")
