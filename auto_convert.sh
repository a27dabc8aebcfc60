#!/usr/bin/env bash
# auto_convert.sh: one-step environment for mindspeed-ms, the MindSpore-native MindSpeed-MM.
#
#   source auto_convert.sh mm [--with-tests] [--convert-script IN.sh [-o OUT.sh | --in-place]]
#
# What it does (the same command MindSpeed-Core-MS users type; see docs/auto_convert.md and
# docs/packaging.md):
#   1. a Python 3.11 virtual environment with the pinned dependencies only (requirements.txt, the
#      demo's vocabulary file, the server's libraries), shared by every clone on the machine
#      (mindspore is ~800 MB: install once): ${MINDSPEED_MS_VENV:-$HOME/.cache/mindspeed-ms/venv};
#      reused while the stamp (hash of the requirements files) matches, so a second `source` is a
#      fast no-op. This package is NOT installed into it: each clone runs its own code;
#   2. activates it and puts this clone first: PYTHONPATH=<clone>, PATH=<clone>/bin (mm-convert,
#      mm-plan, mm-chat, mm-evaluate, ...), replacing another clone's entries in this shell;
#   3. detects the backend (Ascend CANN -> sources its set_env.sh; otherwise CPU fp32);
#   4. creates ckpt/ data/ logs/ in the repository root;
#   5. with --convert-script, rewrites a MindSpeed-MM torchrun script for msrun.
# MINDSPEED_MS_TEST=1 (or --with-tests) also installs requirements-test.txt (CPU torch).
# MINDSPEED_MS_PYTHON=/path/to/python3.11 picks the interpreter.

# Executed instead of sourced: nothing it sets would reach the caller's shell.
if [ -n "${BASH_VERSION:-}" ] && [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "auto_convert.sh must be sourced, not executed, so that the environment it activates stays in your shell:" >&2
    echo "    source auto_convert.sh mm" >&2
    exit 1
fi
if [ -z "${BASH_VERSION:-}" ]; then
    echo "auto_convert.sh needs bash: run 'bash' first, then 'source auto_convert.sh mm'." >&2
    return 1 2>/dev/null || exit 1
fi

_msms_usage() {
    cat >&2 <<'EOF'
usage: source auto_convert.sh mm [--with-tests] [--convert-script IN.sh [-o OUT.sh | --in-place]]
  mm                 MindSpeed-MM multimodal models (Qwen2-VL 2B/7B/72B, DPO, LoRA): the only supported suite
  --with-tests       also install the test requirements (same as MINDSPEED_MS_TEST=1)
  --convert-script   convert a MindSpeed-MM torchrun launch script to msrun (python -m auto_convert launch)
EOF
}

_msms_step() { echo "[auto_convert] $*"; }
_msms_fail() { echo "[auto_convert] FAILED at step '$1': $2" >&2; }

# Hash of the files that decide what is installed; a change means reinstall.
_msms_hash() {
    local f
    for f in "$@"; do cat "$f" || return 1; done | sha256sum | cut -d' ' -f1
}

# A Python 3.11 interpreter: $MINDSPEED_MS_PYTHON, python3.11 on PATH, or pyenv's.
_msms_find_python() {
    local cand
    for cand in "${MINDSPEED_MS_PYTHON:-}" python3.11 "$(command -v pyenv >/dev/null 2>&1 && pyenv root)"/versions/3.11*/bin/python3.11 "$HOME"/.pyenv/versions/3.11*/bin/python3.11 python3; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
        if "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            command -v "$cand" 2>/dev/null || echo "$cand"
            return 0
        fi
    done
    return 1
}

# pip for the test requirements: torch must be the CPU build (a local wheel pip finds through its
# find-links, or the PyTorch CPU index); never the default CUDA build from PyPI.
_msms_install_tests() {
    local venv="$1" repo="$2" torch_pin
    torch_pin=$(grep -E '^torch==' "$repo/requirements-test.txt" | head -n1 | sed 's/[[:space:]#].*//')
    if [ -n "$torch_pin" ]; then
        _msms_step "installing ${torch_pin}+cpu (CPU build)"
        "$venv/bin/python" -m pip install --only-binary=:all: "${torch_pin}+cpu" \
            || "$venv/bin/python" -m pip install --only-binary=:all: --index-url https://download.pytorch.org/whl/cpu "$torch_pin" \
            || { _msms_fail "install CPU torch" "no CPU wheel for ${torch_pin}: put torch-*+cpu*.whl where pip's find-links point, or allow download.pytorch.org/whl/cpu"; return 1; }
    fi
    _msms_step "installing requirements-test.txt"
    "$venv/bin/python" -m pip install -r "$repo/requirements-test.txt" \
        || { _msms_fail "install requirements-test.txt" "pip failed (see above)"; return 1; }
}

# Create, update or reuse the shared venv; returns non-zero after naming the failed step.
_msms_prepare_venv() {
    local repo="$1" venv="$2" with_tests="$3"
    local py want_base want_test have_base="" have_test="" t0=$SECONDS
    want_base=$(_msms_hash "$repo/requirements.txt" "$repo/requirements-demo.txt" "$repo/requirements-serve.txt") \
        || { _msms_fail "hash requirements" "cannot read requirements*.txt in $repo"; return 1; }
    want_test=$(_msms_hash "$repo/requirements-test.txt") \
        || { _msms_fail "hash requirements" "cannot read requirements-test.txt in $repo"; return 1; }
    [ -f "$venv/.mindspeed-ms-stamp" ] && have_base=$(cat "$venv/.mindspeed-ms-stamp")
    [ -f "$venv/.mindspeed-ms-test-stamp" ] && have_test=$(cat "$venv/.mindspeed-ms-test-stamp")

    if [ "$have_base" = "$want_base" ] && [ -x "$venv/bin/python" ]; then
        _msms_step "reusing environment $venv (requirements unchanged)"
    else
        py=$(_msms_find_python) || {
            _msms_fail "find Python 3.11" "mindspeed-ms needs Python 3.11 (mindspore 2.10 wheels). Install it (e.g. 'pyenv install 3.11' or your distribution's python3.11) or set MINDSPEED_MS_PYTHON=/path/to/python3.11"
            return 1
        }
        if [ -x "$venv/bin/python" ]; then
            _msms_step "updating environment $venv (requirements changed)"
        else
            _msms_step "creating environment $venv with $py"
            mkdir -p "$(dirname "$venv")" && "$py" -m venv "$venv" \
                || { _msms_fail "create venv" "'$py -m venv $venv' failed (Debian/Ubuntu: apt-get install python3.11-venv)"; return 1; }
        fi
        rm -f "$venv/.mindspeed-ms-stamp" "$venv/.mindspeed-ms-test-stamp"
        have_test=""
        _msms_step "installing requirements.txt (mindspore is ~800 MB on first install; this takes a few minutes)"
        "$venv/bin/python" -m pip install -r "$repo/requirements.txt" \
            || { _msms_fail "install requirements.txt" "pip failed (see above); fix the network/index and source again"; return 1; }
        # The demo reads only the Qwen vocabulary file of the dashscope wheel
        # (tools/build_tokenizer.py): that file is unpacked; the package and its 35 dependencies
        # are not installed.
        _msms_step "unpacking the Qwen vocabulary file from the wheel named in requirements-demo.txt"
        local wheels
        wheels=$(mktemp -d) && "$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
                -d "$wheels" -r "$repo/requirements-demo.txt" \
            && "$venv/bin/python" -m zipfile -e "$(ls "$wheels"/*.whl | head -n1)" "$wheels/unpacked" \
            && mkdir -p "$venv/share/mindspeed-ms" \
            && cp "$wheels/unpacked/dashscope/resources/qwen.tiktoken" "$venv/share/mindspeed-ms/qwen.tiktoken" \
            || { rm -rf "$wheels"; _msms_fail "Qwen vocabulary file" "could not download or unpack the wheel of requirements-demo.txt"; return 1; }
        rm -rf "$wheels"
        "$venv/bin/python" -m pip install -r "$repo/requirements-serve.txt" \
            || { _msms_fail "install requirements-serve.txt" "pip failed (see above)"; return 1; }
        # Environments of earlier versions held an editable install linked to one clone, which
        # made every clone run that clone's code; the code now comes from each clone's own path.
        if [ -f "$venv/.mindspeed-ms-repo" ]; then
            "$venv/bin/python" -m pip uninstall --quiet --yes mindspeed-ms >/dev/null 2>&1
            rm -f "$venv/.mindspeed-ms-repo"
        fi
        # Written last: an interrupted install is redone next time.
        echo "$want_base" > "$venv/.mindspeed-ms-stamp"
        _msms_step "environment ready in $((SECONDS - t0)) s"
    fi
    if [ "$with_tests" = 1 ] && [ "$have_test" != "$want_test" ]; then
        _msms_install_tests "$venv" "$repo" || return 1
        echo "$want_test" > "$venv/.mindspeed-ms-test-stamp"
    fi
}

_msms_setup() {
    local repo venv suite with_tests=0 convert_in="" convert_out="" in_place=0
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P) || return 1
    venv="${MINDSPEED_MS_VENV:-$HOME/.cache/mindspeed-ms/venv}"
    [ "${MINDSPEED_MS_TEST:-0}" = 1 ] && with_tests=1

    suite="${1:-}"
    if [ "$suite" != mm ]; then
        if [ -z "$suite" ]; then
            echo "auto_convert.sh: which suite? Supported: mm (MindSpeed-MM multimodal, Qwen2-VL)." >&2
        else
            echo "auto_convert.sh: unsupported suite '$suite'. Supported: mm (MindSpeed-MM multimodal, Qwen2-VL); llm/rl suites of MindSpeed-Core-MS are not part of mindspeed-ms." >&2
        fi
        _msms_usage
        return 2
    fi
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --with-tests) with_tests=1 ;;
            --convert-script) convert_in="${2:-}"; [ -n "$convert_in" ] || { echo "auto_convert.sh: --convert-script needs a script path" >&2; return 2; }; shift ;;
            -o|--output) convert_out="${2:-}"; [ -n "$convert_out" ] || { echo "auto_convert.sh: $1 needs a path" >&2; return 2; }; shift ;;
            --in-place) in_place=1 ;;
            -h|--help) _msms_usage; return 0 ;;
            *) echo "auto_convert.sh: unknown option '$1'" >&2; _msms_usage; return 2 ;;
        esac
        shift
    done

    # One clone at a time installs into the shared venv (another clone may be sourcing too).
    local lockfd="" rc=0
    mkdir -p "$(dirname "$venv")" || { _msms_fail "create venv directory" "cannot create $(dirname "$venv")"; return 1; }
    if command -v flock >/dev/null 2>&1 && exec {lockfd}>"$venv.lock"; then
        flock "$lockfd"
    fi
    _msms_prepare_venv "$repo" "$venv" "$with_tests" || rc=$?
    if [ -n "$lockfd" ]; then exec {lockfd}>&-; fi
    [ "$rc" = 0 ] || return "$rc"

    # shellcheck disable=SC1091
    source "$venv/bin/activate" || { _msms_fail "activate" "cannot source $venv/bin/activate"; return 1; }
    # This clone first, and no other clone's entries left from an earlier source in this shell.
    local old="${MINDSPEED_MS_HOME:-}" p kept
    if [ -n "$old" ] && [ "$old" != "$repo" ]; then
        kept=""; local IFS=:
        for p in ${PYTHONPATH:-}; do [ "$p" = "$old" ] || kept="${kept:+$kept:}$p"; done
        PYTHONPATH="$kept"; kept=""
        for p in $PATH; do [ "$p" = "$old/bin" ] || kept="${kept:+$kept:}$p"; done
        PATH="$kept"; unset IFS
    fi
    case ":${PYTHONPATH:-}:" in *":$repo:"*) ;; *) PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    case ":$PATH:" in *":$repo/bin:"*) ;; *) PATH="$repo/bin:$PATH" ;; esac
    export PYTHONPATH PATH MINDSPEED_MS_HOME="$repo"
    [ "$(command -v mm-convert)" = "$repo/bin/mm-convert" ] || { _msms_fail "check mm-convert" "$repo/bin/mm-convert is not the first mm-convert on PATH"; return 1; }

    local cann=""
    if [ -f /usr/local/Ascend/cann/set_env.sh ]; then
        cann=/usr/local/Ascend/cann/set_env.sh
    elif [ -f /usr/local/Ascend/ascend-toolkit/set_env.sh ]; then
        cann=/usr/local/Ascend/ascend-toolkit/set_env.sh
    fi
    if [ -n "$cann" ]; then
        # shellcheck disable=SC1090
        source "$cann" || { _msms_fail "source CANN" "$cann returned an error"; return 1; }
        _msms_step "backend: Ascend (CANN environment from $cann)"
    else
        _msms_step "backend: CPU (no Ascend CANN found): training runs in fp32 on the CPU"
    fi

    mkdir -p "$repo/ckpt" "$repo/data" "$repo/logs" || { _msms_fail "create ckpt/ data/ logs/" "cannot create them in $repo"; return 1; }

    if [ -n "$convert_in" ]; then
        local args=(launch "$convert_in")
        if [ "$in_place" = 1 ]; then args+=(--in-place); elif [ -n "$convert_out" ]; then args+=(-o "$convert_out"); fi
        _msms_step "converting launch script $convert_in"
        python -m auto_convert "${args[@]}" || { _msms_fail "convert script" "$convert_in could not be converted (see the lines reported above)"; return 1; }
    fi
    _msms_step "ready: mindspeed-ms in $repo, python $(command -v python)"
}

_msms_setup "$@"
_msms_rc=$?
unset -f _msms_usage _msms_step _msms_fail _msms_hash _msms_find_python _msms_install_tests _msms_prepare_venv _msms_setup
eval "unset _msms_rc; return $_msms_rc"
