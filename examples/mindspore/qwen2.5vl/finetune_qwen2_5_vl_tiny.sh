#!/bin/bash
# Tiny Qwen2.5-VL fine-tuning that runs anywhere: 2 msrun workers (data parallel) on a plain CPU in a
# few minutes, or on Ascend when it is installed. Same flags and layout as finetune_qwen2_5_vl_7b.sh.
# Missing inputs are built first: a seeded random HF checkpoint with the real Qwen2-VL tokenizer (Qwen2.5-VL uses the same),
# its MindSpeed-MM conversion (mm-convert hf_to_mm) and a small image-question dataset.
# Run from the repository root:  bash examples/mindspore/qwen2.5vl/finetune_qwen2_5_vl_tiny.sh
set -o pipefail
cd "$(dirname "$0")/../../.." || exit 1       # the repository root, where the paths below start

PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import mindspore" >/dev/null 2>&1; then
    echo "error: '$PYTHON' cannot import mindspore; activate the environment of the README's set-up (or set PYTHON=/path/to/python)" >&2
    exit 1
fi
# msrun starts its workers with the 'python' found on PATH: make it this one
export PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"

if [ -f /usr/local/Ascend/cann/set_env.sh ]; then
    source /usr/local/Ascend/cann/set_env.sh
    BIND_CORE="--bind_core=True"
else
    echo "notice: no Ascend toolkit (/usr/local/Ascend/cann/set_env.sh): skipping set_env.sh, running on CPU in fp32"
    BIND_CORE=""
fi
export CUDA_DEVICE_MAX_CONNECTIONS=1
export ASCEND_SLOG_PRINT_TO_STDOUT=0
export ASCEND_GLOBAL_LOG_LEVEL=3
export TASK_QUEUE_ENABLE=2
export COMBINED_ENABLE=1
export CPU_AFFINITY_CONF=1
export HCCL_CONNECT_TIMEOUT=1200
export NPU_ASD_ENABLE=0
export ASCEND_LAUNCH_BLOCKING=0
export ACLNN_CACHE_LIMIT=100000
export GLOG_v=${GLOG_v:-3}          # MindSpore: errors only in the console

NPUS_PER_NODE=${NPUS_PER_NODE:-2}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=1
NODE_RANK=0
WORLD_SIZE=$(($NPUS_PER_NODE*$NNODES))

MM_DATA=${MM_DATA:-"./examples/mindspore/qwen2.5vl/data_tiny.json"}
MM_MODEL="./examples/mindspore/qwen2.5vl/model_tiny.json"
MM_TOOL="./mindspeed_mm/tools/tools.json"
HF_PATH="./ckpt/hf_path/Qwen2.5-VL-tiny"
LOAD_PATH="ckpt/mm_path/Qwen2.5-VL-tiny"
DATA_DIR=${DATA_DIR:-"./data/tiny_demo"}           # the dataset MM_DATA names (built when absent)
SAVE_PATH=${SAVE_PATH:-save_dir_qwen2_5_vl_tiny}
TRAIN_ITERS=${TRAIN_ITERS:-40}

TP=1
PP=1
CP=1
MBS=2
GRAD_ACC_STEP=2
DP=$(($WORLD_SIZE/$TP/$PP/$CP))
GBS=$(($MBS*$GRAD_ACC_STEP*$DP))

# ---- inputs, built when absent ------------------------------------------------------------------
if [ ! -f "$HF_PATH/config.json" ]; then
    "$PYTHON" -m mindspeed_ms.tools.make_tiny_checkpoint "$HF_PATH" --mm-model "$MM_MODEL" --seed 1234 || exit 1
fi
if [ ! -f "$DATA_DIR/train.json" ]; then
    "$PYTHON" -m mindspeed_ms.tools.make_demo_dataset "$DATA_DIR" --seed 1234 --no-llava || exit 1
fi
if [ ! -f "$LOAD_PATH/latest_checkpointed_iteration.txt" ]; then
    LLM_LAYERS=$("$PYTHON" -c "import json; print(json.load(open('$MM_MODEL'))['text_decoder']['num_layers'])")
    VIT_LAYERS=$("$PYTHON" -c "import json; print(json.load(open('$MM_MODEL'))['image_encoder']['vision_encoder']['num_layers'])")
    if command -v mm-convert >/dev/null 2>&1; then MM_CONVERT="mm-convert"; else MM_CONVERT="$PYTHON -m mindspeed_ms.checkpoint.cli"; fi
    $MM_CONVERT Qwen2_5_VLConverter hf_to_mm \
        --cfg.mm_dir "$LOAD_PATH" \
        --cfg.hf_config.hf_dir "$HF_PATH" \
        --cfg.parallel_config.llm_pp_layers "[[$LLM_LAYERS]]" \
        --cfg.parallel_config.vit_pp_layers "[[$VIT_LAYERS]]" \
        --cfg.parallel_config.tp_size 1 || exit 1
fi

DISTRIBUTED_ARGS="
    --local_worker_num $NPUS_PER_NODE \
    --worker_num $WORLD_SIZE \
    --node_rank $NODE_RANK \
    --master_addr $MASTER_ADDR \
    --master_port $MASTER_PORT \
    --log_dir msrun_log \
    --join=True \
    $BIND_CORE
"

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --context-parallel-size ${CP} \
    --context-parallel-algo ulysses_cp_algo \
    --micro-batch-size ${MBS} \
    --global-batch-size ${GBS} \
    --tokenizer-type NullTokenizer \
    --vocab-size 151936 \
    --seq-length 256 \
    --make-vocab-size-divisible-by 1 \
    --normalization RMSNorm \
    --use-fused-rmsnorm \
    --swiglu \
    --use-fused-swiglu \
    --no-masked-softmax-fusion \
    --lr 5.0e-3 \
    --lr-decay-style cosine \
    --min-lr 5.0e-4 \
    --weight-decay 0 \
    --train-iters ${TRAIN_ITERS} \
    --lr-warmup-fraction 0.1 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.999 \
    --no-gradient-accumulation-fusion \
    --seed 42 \
    --bf16 \
    --load $LOAD_PATH \
    --variable-seq-lengths \
    --use-flash-attn \
    --no-load-optim \
    --no-load-rng \
    --num-workers 1 \
    --distributed-timeout-minutes 20 \
"

MM_ARGS="
    --mm-data $MM_DATA \
    --mm-model $MM_MODEL \
    --mm-tool $MM_TOOL
"

OUTPUT_ARGS="
    --log-interval 1 \
    --save-interval ${TRAIN_ITERS} \
    --eval-interval 20 \
    --eval-iters 2 \
    --save $SAVE_PATH \
    --ckpt-format torch \
    --log-tps \
"
logfile=$(date +%Y%m%d)_$(date +%H%M%S)
mkdir -p logs
msrun $DISTRIBUTED_ARGS pretrain_vlm.py \
    $GPT_ARGS \
    $MM_ARGS \
    $OUTPUT_ARGS \
    --ai-framework mindspore \
    --distributed-backend nccl \
    2>&1 | grep -v -E "^\[(WARNING|INFO)\]|^$" | tee logs/train_${logfile}.log
STATUS=$?
if [ $STATUS -ne 0 ]; then
    echo "training failed (exit $STATUS); worker logs: msrun_log/" >&2
    exit $STATUS
fi
STEP_TIME=`grep "elapsed time per iteration" logs/train_${logfile}.log | awk -F ':' '{print$5}' | awk -F '|' '{print$1}' | head -n 150 | tail -n 100 | awk '{sum+=$1} END {if (NR != 0) printf("%.1f",sum/NR)}'`
SAMPLES_PER_SECOND=`awk 'BEGIN{printf "%.3f\n", '${GBS}'*1000/'${STEP_TIME}'}'`
echo "Elapsed Time Per iteration: $STEP_TIME"
echo "Average Samples per Second: $SAMPLES_PER_SECOND"
LOG_TOKENS_PER_SECOND=`grep "tokens per sample" logs/train_${logfile}.log`
if [ "$LOG_TOKENS_PER_SECOND" ]; then
    AVERAGE_TOKENS=`grep "tokens per sample" logs/train_${logfile}.log | awk -F 'tokens per sample:' '{print$2}' | awk -F '|' '{print$1}' | head -n 150 | tail -n 100 | awk '{sum+=$1} END {if (NR != 0) printf("%.1f",sum/NR)}'`
    TOKENS_PER_SECOND=`awk 'BEGIN{printf "%.3f\n", '${SAMPLES_PER_SECOND}'*'${AVERAGE_TOKENS}'}'`
    echo "Consumed Tokens per Second: $TOKENS_PER_SECOND"
fi
