#!/usr/bin/env bash
# The training figures of benchmarks/RESULTS.md on one GPU, in one call: the shipped LLaVA-1.5-7B specs
# on a random-init model of their shapes, one process, no Ray (train.setup + train.loop, as a worker
# runs them), each run under its own time limit so that one failure keeps the others' figures.
#
#   OUT=/tmp/gpu benchmarks/gpu_train.sh                 # logs in $OUT/<run>.log, the figures printed
#   DEVICE=cpu PRESET=tiny STEPS=2 PYTHON=.venv/bin/python benchmarks/gpu_train.sh   # dry run of the sequence
#   PROFILE=1 ...                                        # + 1 step of the first run under torch.profiler
#   RUNS="zero3 qlora" ...                               # some of the runs only
#
# The full fine-tune runs the shipped spec's batch: global batch 128, reached on one GPU by accumulating
# micro-batches (the spec's 8 workers step once per micro-batch with the optimizer state cut 8 ways: the
# same optimizer work per sample on each GPU). bf16, gradient checkpointing, micro-batch 16.
#   zero2_compile_n2  DeepSpeed ZeRO-2 (bf16 weights, float32 master copy in the optimizer), every layer
#                     torch.compile'd (train.compile), every other layer recomputed (checkpoint_every_n_layers=2)
#   zero2_compile     the same, every layer recomputed
#   zero2             ZeRO-2 eager, every layer recomputed
#     ZeRO-2 holds ~18 bytes per parameter on one GPU (a float32 gradient partition too): these three
#     always run 16 LLM layers, whose per-layer shapes, hence MFU, are the full model's.
#   zero3        the shipped spec as it is: DeepSpeed ZeRO-3, all 32 layers on an H200
#   ddp_compile  torch (float32 master weights, bf16 autocast), layers compiled
#   ddp          ddp_compile without the compile
#     On a GPU of less than 130 GiB (~16 bytes of weights, gradients and Adam state per parameter: a 7B
#     fits an H200, not an H100) zero3 and ddp run 16 LLM layers; a run of all 32 that runs out of memory
#     is repeated with 16.
#   qlora        4-bit NF4 base, LoRA r 128 on every LLM linear, projector trained, micro-batch 8.
# On an H200 (2026-11-28) RUNS="zero2_compile zero2_compile_n2 zero3 zero2" with PROFILE=1 took 382 s of
# one call, each compiling run ~100-150 s of it (the first compile; later processes reuse inductor's cache).
set -u
OUT=${OUT:-/tmp/llava-platform-gpu}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-llava-1.5-7b}
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
RUNS=${RUNS:-zero2_compile_n2 zero2_compile zero3 zero2 ddp_compile ddp qlora}
PYTHON=${PYTHON:-python3}
PROFILE=${PROFILE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

bench() {  # bench NAME SECONDS ARGS...: one benchmark process, its log in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: train_throughput.py $*"
    timeout "$limit" "$PYTHON" benchmarks/train_throughput.py --preset "$PRESET" --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP" "$@" \
        >"$OUT/$name.log" 2>&1
    local status=$?
    grep -E "^(  [a-z.=_ ]+: |$PRESET)" "$OUT/$name.log" || tail -n 4 "$OUT/$name.log"
    sed -n '/under torch.profiler/,/time total/p' "$OUT/$name.log" | head -n 40
    echo "   exit $status"
    return $status
}

"$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
      'peft', peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
LAYERS=()  # all of the preset's LLM layers, unless the GPU cannot hold a 7B's training state
if [ "$DEVICE" = cuda ]; then
    gib=$("$PYTHON" -c "import torch; print(torch.cuda.mem_get_info()[1] >> 30)")
    if [ "$gib" -lt 130 ]; then  # ~16 bytes per parameter + activations: ~115 GiB for 7B (an H200 has 139)
        LAYERS=(--llm-layers 16)
        echo "$gib GiB of GPU memory: the full fine-tunes run 16 LLM layers (the same per-layer shapes, hence MFU)"
    fi
fi
full() {  # full NAME SECONDS OVERRIDES...: the 7B full fine-tune; 16 LLM layers if the 32 run out of memory
    local name=$1 limit=$2
    shift 2
    bench "$name" "$limit" --no-compare "${LAYERS[@]}" --config jobs/configs/llava-1.5-7b_finetune.yaml "$@" && return 0
    [ ${#LAYERS[@]} -eq 0 ] && grep -q "out of memory" "$OUT/$name.log" && bench "${name}_16layers" "$limit" --no-compare \
        --llm-layers 16 --config jobs/configs/llava-1.5-7b_finetune.yaml "$@"
}
zero2() {  # zero2 NAME SECONDS OVERRIDES...: ZeRO-2, 16 LLM layers
    local name=$1 limit=$2
    shift 2
    bench "$name" "$limit" --no-compare --llm-layers 16 --config jobs/configs/llava-1.5-7b_finetune.yaml train.strategy=zero2 "$@"
}
profile=(--profile "$PROFILE")
for run in $RUNS; do
    case $run in
    zero2_compile_n2) zero2 zero2_compile_n2 250 "${profile[@]}" train.compile=true train.checkpoint_every_n_layers=2 ;;
    zero2_compile) zero2 zero2_compile 250 "${profile[@]}" train.compile=true ;;  # 250 s: a cold inductor cache
    zero2) zero2 zero2 110 "${profile[@]}" ;;
    zero3) full zero3 200 "${profile[@]}" ;;
    ddp_compile) full ddp_compile 300 "${profile[@]}" train.strategy=ddp train.compile=true ;;
    ddp) full ddp 170 "${profile[@]}" train.strategy=ddp ;;
    qlora) bench qlora 190 "${profile[@]}" --config jobs/configs/llava-1.5-7b_qlora.yaml --no-compare \
        train.micro_batch_size=8 train.global_batch_size=64 ;;
    *) echo "unknown run $run (zero2_compile_n2 zero2_compile zero2 zero3 ddp_compile ddp qlora)" && exit 2 ;;
    esac
    profile=(--profile 0)  # the first run only
done
