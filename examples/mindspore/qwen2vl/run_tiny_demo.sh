#!/bin/bash
# The main job on any machine, no accelerator and no download needed: build a tiny Qwen2-VL (random
# weights, the real 151,646-token vocabulary) and a picture-question dataset, convert the checkpoint
# to MindSpeed-MM format (mm-convert hf_to_mm), measure held-out accuracy, fine-tune with
# finetune_qwen2vl_tiny.sh (2 msrun workers), measure again, convert back (mm-convert mm_to_hf), ask
# the trained model about an image from both checkpoints, and report.
#
#   bash examples/mindspore/qwen2vl/run_tiny_demo.sh            # the demo
#   BLANK=1 bash examples/mindspore/qwen2vl/run_tiny_demo.sh    # control: all images plain grey
#
# Environment knobs: TRAIN_ITERS (fine-tuning steps), RUN_DIR (where results go; default
# runs/tiny_demo[_blank]_<time>), N_TRAIN / N_VAL (dataset sizes), PYTHON.
# Inputs already present (tiny checkpoint, dataset, its MM conversion) are reused.
set -o pipefail
cd "$(dirname "$0")/../../.." || exit 1       # the repository root
T_START=$(date +%s)

PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import mindspore" >/dev/null 2>&1; then
    echo "error: '$PYTHON' cannot import mindspore; run the README's set-up first (source auto_convert.sh mm) or set PYTHON=/path/to/python" >&2
    exit 1
fi
export PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"
export GLOG_v=${GLOG_v:-3}
if command -v mm-convert >/dev/null 2>&1; then MM_CONVERT="mm-convert"; else MM_CONVERT="$PYTHON -m mindspeed_ms.checkpoint.cli"; fi

BLANK=${BLANK:-0}
TRAIN_ITERS=${TRAIN_ITERS:-240}
N_TRAIN=${N_TRAIN:-2000}
N_VAL=${N_VAL:-120}
PACKING=${PACKING:-0}        # 1: neat_packing in the run's data.json (several samples per 256-token row)
SEED=1234
HF_PATH="./ckpt/hf_path/Qwen2-VL-tiny"
LOAD_PATH="ckpt/mm_path/Qwen2-VL-tiny"
MM_MODEL="./examples/mindspore/qwen2vl/model_tiny.json"
if [ "$BLANK" = "1" ]; then
    DATA_DIR="./data/tiny_demo_blank"
    BLANK_FLAG="--blank"
    RUN_DIR=${RUN_DIR:-runs/tiny_demo_blank_$(date +%Y%m%d_%H%M%S)}
else
    DATA_DIR="./data/tiny_demo"
    BLANK_FLAG=""
    RUN_DIR=${RUN_DIR:-runs/tiny_demo_$(date +%Y%m%d_%H%M%S)}
fi
mkdir -p "$RUN_DIR" || exit 1
LLM_LAYERS=$("$PYTHON" -c "import json; print(json.load(open('$MM_MODEL'))['text_decoder']['num_layers'])")
VIT_LAYERS=$("$PYTHON" -c "import json; print(json.load(open('$MM_MODEL'))['image_encoder']['vision_encoder']['num_layers'])")

step() { echo; echo "=== [$(( $(date +%s) - T_START ))s] $*"; }

# data.json of this run: data_tiny.json pointed at this run's dataset directory
MM_DATA="$RUN_DIR/data_tiny.json"
"$PYTHON" - "$DATA_DIR" "$MM_DATA" "$PACKING" <<'EOF' || exit 1
import json, sys
data_dir, out = sys.argv[1], sys.argv[2]
packing = sys.argv[3] == "1"
with open("examples/mindspore/qwen2vl/data_tiny.json") as f:
    cfg = json.load(f)
b = cfg["dataset_param"]["basic_parameters"]
if packing:
    b["neat_packing"] = True
b.update(dataset_dir=data_dir, dataset=f"{data_dir}/train.json", val_dataset=f"{data_dir}/val.json",
         cache_dir=f"{data_dir}/cache_dir")
with open(out, "w") as f:
    json.dump(cfg, f, indent=4)
EOF

step "1/8 tiny checkpoint and dataset"
if [ ! -f "$HF_PATH/config.json" ]; then
    "$PYTHON" -m mindspeed_ms.tools.make_tiny_checkpoint "$HF_PATH" --mm-model "$MM_MODEL" --seed $SEED || exit 1
else
    echo "reusing $HF_PATH"
fi
if [ ! -f "$DATA_DIR/val.json" ]; then
    "$PYTHON" -m mindspeed_ms.tools.make_demo_dataset "$DATA_DIR" --seed $SEED --train $N_TRAIN --val $N_VAL $BLANK_FLAG || exit 1
else
    echo "reusing $DATA_DIR"
fi

step "2/8 mm-convert hf_to_mm"
if [ ! -f "$LOAD_PATH/latest_checkpointed_iteration.txt" ]; then
    $MM_CONVERT Qwen2VLConverter hf_to_mm \
        --cfg.mm_dir "$LOAD_PATH" \
        --cfg.hf_config.hf_dir "$HF_PATH" \
        --cfg.parallel_config.llm_pp_layers "[[$LLM_LAYERS]]" \
        --cfg.parallel_config.vit_pp_layers "[[$VIT_LAYERS]]" \
        --cfg.parallel_config.tp_size 1 || exit 1
else
    echo "reusing $LOAD_PATH"
fi

EVAL_ARGS="--mm-model $MM_MODEL --mm-data $MM_DATA --data $DATA_DIR/val.json"
step "3/8 held-out accuracy before fine-tuning"
"$PYTHON" -m mindspeed_ms.inference.evaluate --load "$LOAD_PATH" $EVAL_ARGS --output "$RUN_DIR/eval_before.json" \
    2> "$RUN_DIR/eval_before.err" || { cat "$RUN_DIR/eval_before.err" >&2; exit 1; }

step "4/8 fine-tuning: finetune_qwen2vl_tiny.sh, $TRAIN_ITERS steps on 2 msrun workers"
TRAIN_ITERS=$TRAIN_ITERS SAVE_PATH="$RUN_DIR/save" MM_DATA="$MM_DATA" DATA_DIR="$DATA_DIR" PYTHON="$PYTHON" \
    bash examples/mindspore/qwen2vl/finetune_qwen2vl_tiny.sh 2>&1 | tee "$RUN_DIR/train.log"
[ ${PIPESTATUS[0]} -eq 0 ] || { echo "error: fine-tuning failed; see $RUN_DIR/train.log and msrun_log/" >&2; exit 1; }

step "5/8 held-out accuracy after fine-tuning"
"$PYTHON" -m mindspeed_ms.inference.evaluate --load "$RUN_DIR/save" $EVAL_ARGS --output "$RUN_DIR/eval_after.json" \
    2> "$RUN_DIR/eval_after.err" || { cat "$RUN_DIR/eval_after.err" >&2; exit 1; }

step "6/8 mm-convert mm_to_hf"
$MM_CONVERT Qwen2VLConverter mm_to_hf \
    --cfg.save_hf_dir "$RUN_DIR/hf_trained" \
    --cfg.mm_dir "$RUN_DIR/save" \
    --cfg.hf_config.hf_dir "$HF_PATH" \
    --cfg.parallel_config.llm_pp_layers "[$LLM_LAYERS]" \
    --cfg.parallel_config.vit_pp_layers "[$VIT_LAYERS]" \
    --cfg.parallel_config.tp_size 1 || exit 1

step "7/8 chat about an image with the trained model: MM checkpoint and its HF conversion"
IMAGE=$("$PYTHON" -c "
import json, sys
d = '$DATA_DIR'
s, t = json.load(open(d + '/val.json')), json.load(open(d + '/val_types.json'))
print(d + '/' + next(x for x, k in zip(s, t) if k == 'colour')['images'][0])")
QUESTION="What colour is the shape?"
echo "image: $IMAGE   question: $QUESTION"
CHAT_MM=$("$PYTHON" -m mindspeed_ms.inference.chat --load "$RUN_DIR/save" --mm-model "$MM_MODEL" --mm-data "$MM_DATA" \
    --image "$IMAGE" --prompt "$QUESTION" 2> "$RUN_DIR/chat.err") || { cat "$RUN_DIR/chat.err" >&2; exit 1; }
CHAT_HF=$("$PYTHON" -m mindspeed_ms.inference.chat --load "$RUN_DIR/hf_trained" --mm-data "$MM_DATA" \
    --image "$IMAGE" --prompt "$QUESTION" 2>> "$RUN_DIR/chat.err") || { cat "$RUN_DIR/chat.err" >&2; exit 1; }
echo "MM checkpoint: $CHAT_MM"
echo "HF directory:  $CHAT_HF"

step "8/8 report"
"$PYTHON" -m mindspeed_ms.inference.demo_report --run-dir "$RUN_DIR" --train-log "$RUN_DIR/train.log" \
    --before "$RUN_DIR/eval_before.json" --after "$RUN_DIR/eval_after.json" \
    --chat-mm "$CHAT_MM" --chat-hf "$CHAT_HF" --total-seconds $(( $(date +%s) - T_START )) || exit 1
if [ "$CHAT_MM" != "$CHAT_HF" ]; then
    echo "error: the MM checkpoint and its HF conversion answered differently" >&2
    exit 1
fi
