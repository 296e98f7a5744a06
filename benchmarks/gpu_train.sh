#!/usr/bin/env bash
# The training figures of benchmarks/RESULTS.md on one GPU, in one call: the shipped LLaVA-1.5-7B specs
# on a random-init model of their shapes, one process, no Ray (train.setup + train.loop, as a worker
# runs them), each run under its own time limit so that one failure keeps the others' figures.
#
#   OUT=/tmp/gpu benchmarks/gpu_train.sh                 # logs in $OUT/<run>.log, the figures printed
#   DEVICE=cpu PRESET=tiny STEPS=2 PYTHON=.venv/bin/python benchmarks/gpu_train.sh   # dry run of the sequence
#   PROFILE=2 ...                                        # + 2 steps of the full fine-tune under torch.profiler
#
# 1. full fine-tune, ZeRO-3, bf16, gradient checkpointing, micro-batch 16 (the shipped spec's), then
#    stage 1 of the same shapes in the same process; if all 32 layers do not fit one GPU's memory
#    (ZeRO-3 on one GPU partitions nothing: ~16 bytes of weights + Adam state per parameter), the same
#    widths with 16 LLM layers, whose per-layer shapes (hence MFU) are the full model's.
# 2. QLoRA: 4-bit NF4 base, LoRA r 128 on every LLM linear, projector trained, micro-batch 8.
set -u
OUT=${OUT:-/tmp/llava-platform-gpu}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-llava-1.5-7b}
STEPS=${STEPS:-10}
PYTHON=${PYTHON:-python3}
PROFILE=${PROFILE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

bench() {  # bench NAME SECONDS ARGS...: one benchmark process, its log in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: train_throughput.py $*"
    timeout "$limit" "$PYTHON" benchmarks/train_throughput.py --preset "$PRESET" --device "$DEVICE" --steps "$STEPS" "$@" \
        >"$OUT/$name.log" 2>&1
    local status=$?
    grep -E "^(  [a-z.=_ ]+: |$PRESET)" "$OUT/$name.log" || tail -n 4 "$OUT/$name.log"
    sed -n '/under torch.profiler/,/time total/p' "$OUT/$name.log" | head -n 40
    echo "   exit $status"
    return $status
}

"$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
      'peft', peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
FULL=(--config jobs/configs/llava-1.5-7b_finetune.yaml train.micro_batch_size=16 train.global_batch_size=16)
if ! bench full_zero3 240 --profile "$PROFILE" "${FULL[@]}" && grep -q "out of memory" "$OUT/full_zero3.log"; then
    bench full_zero3_16layers 140 --llm-layers 16 --no-compare "${FULL[@]}"
fi
bench qlora 190 --config jobs/configs/llava-1.5-7b_qlora.yaml --no-compare train.micro_batch_size=8 train.global_batch_size=8
