#!/usr/bin/env bash
# GPU check of the training stack, in two parts (about 9 minutes on one H200, unmeasured):
#
#   steps    a few DeepSpeed ZeRO-2 steps of the MiniLM two-tower on 1 GPU with the NCCL
#            backend, in fp32 (reference), fp16 (dynamic loss scaling) and bf16: median step
#            time, samples/s and peak GPU memory of each (at most STEPS_TIMEOUT s).
#   quality  the fine-tuning recipe (cluster/presets/gpu-minilm-finetune-ml.yaml) trained on
#            ml-latest-small leave-last-5 and scored on test by bench/quality_recipe.py: NDCG@10
#            and Recall@10 beside most_popular and BPR fitted in the same run, and beside the
#            frozen-encoder recipe's figure in bench/README.md (FROZEN=1: the same preset with
#            the encoder frozen is trained in the same run too, ~3 more minutes, estimated).
#            Reads ../shared/data/ml-latest-small (quality.py's default) in place; writes
#            only to a temporary root. Gets what is left of BUDGET seconds after the steps part.
#
# On a machine with no CUDA GPU it says so and exits 0.
#
#   bash bench/gpu_check.sh                 # both parts; uses .venv/bin/python when present
#   PART=quality FROZEN=1 bash bench/gpu_check.sh
#   PYTHON=python3 STEPS=20 BATCH=128 PART=steps bash bench/gpu_check.sh
#   EPOCHS=4 PART=quality bash bench/gpu_check.sh   # a shorter fine-tune (the preset has 8)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
PART="${PART:-all}"
BUDGET="${BUDGET:-540}"                # seconds for the whole script
STEPS_TIMEOUT="${STEPS_TIMEOUT:-290}"  # the steps part's own limit
PRESET=cluster/presets/gpu-minilm-finetune-ml.yaml
export STEPS="${STEPS:-12}" BATCH="${BATCH:-64}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/recbatch/torch_extensions}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$PART" in
  steps|quality|all) ;;
  *) echo "gpu_check: PART must be steps, quality or all, not '$PART'" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  build=$("$PYTHON" -c "import torch; print(torch.__version__, 'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build')" \
    2>/dev/null || echo "not importable")
  echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False; torch: $build); nothing to check."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# Runs "$@" under a limit of $1 seconds; on a timeout says which part hung and fails.
guarded() {
  local limit=$1 what=$2; shift 2
  local rc=0
  timeout --kill-after=30 "$limit" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: $what did not finish within $limit s (exit $rc); stopped." >&2
  elif [ "$rc" -ne 0 ]; then
    echo "gpu_check: $what failed (exit $rc); see above." >&2
  fi
  return "$rc"
}

failed=""  # a failed part does not stop the next one: device time is scarce
if [ "$PART" != quality ]; then
guarded "$STEPS_TIMEOUT" "the steps part" "$PYTHON" - <<'PY' || failed="$failed steps"
import os, statistics, time

import torch
import torch.distributed as dist

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29531")
os.environ.setdefault("RANK", "0")
os.environ.setdefault("WORLD_SIZE", "1")
os.environ.setdefault("LOCAL_RANK", "0")
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1)

import deepspeed

from recbatch.config import TrainConfig
from recbatch.model.loss import sampled_softmax_loss
from recbatch.model.two_tower import TwoTowerConfig, build_two_tower
from recbatch.train.deepspeed_config import build_deepspeed_config
from recbatch.train.loop import parameter_groups

steps, B, L, T, M = int(os.environ["STEPS"]), int(os.environ["BATCH"]), 20, 64, 5000
device = torch.device("cuda", 0)
print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, {torch.cuda.get_device_name(0)}, nccl {torch.cuda.nccl.version()}")
print(f"{'precision':10s} {'median step ms':>15s} {'samples/s':>10s} {'peak GiB':>9s} {'final loss':>10s}")
for precision in ("fp32", "fp16", "bf16"):
    torch.manual_seed(0)
    model, tokenizer = build_two_tower("minilm", TwoTowerConfig(embedding_dim=128, num_item_ids=M, history_length=L))
    train = TrainConfig(precision=precision, zero_stage=2, batch_size=B, use_gpu="true")
    groups, peaks = parameter_groups(model, train)
    ds_config = build_deepspeed_config(train, on_gpu=True, world_size=1, total_steps=steps, group_learning_rates=peaks)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), config=ds_config)
    texts = [f"item {i} | genres: drama, space | a story about topic {i % 17}" for i in range(B)]
    tok = tokenizer(texts, max_length=T, padding="max_length", truncation=True, return_tensors="pt").to(device)
    H = model.config.encoder_hidden
    torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for step in range(steps):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        users, items = engine(
            "train",
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
            id_index=torch.randint(1, M + 1, (B,), device=device),
            history_pooled=torch.randn(B, L, H, device=device), history_id_index=torch.randint(0, M + 1, (B, L), device=device),
            history_mask=torch.ones(B, L, dtype=torch.bool, device=device),
            user_categorical=torch.zeros(B, 0, dtype=torch.long, device=device), user_numeric=torch.zeros(B, 0, device=device),
        )
        loss = sampled_softmax_loss(users, items, torch.arange(B, device=device), temperature=0.05)
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    ms = statistics.median(times[2:]) * 1000
    print(f"{precision:10s} {ms:15.1f} {B / ms * 1000:10.0f} {torch.cuda.max_memory_allocated() / 2**30:9.2f} {float(loss):10.3f}")
    del engine, model
    torch.cuda.empty_cache()
dist.destroy_process_group()
print("gpu_check: steps OK")
PY
fi

if [ "$PART" != steps ]; then
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 120 ]; then
    echo "gpu_check: only $left s of BUDGET=$BUDGET left for the quality part; raise BUDGET or run the part alone (PART=quality)." >&2
    exit 1
  fi
  root=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  args=(--config "$PRESET" --root "$root")
  [ -n "${EPOCHS:-}" ] && args+=(--set "train.epochs=$EPOCHS")
  [ "${FROZEN:-0}" = 1 ] && args+=(--reference model.freeze_encoder=true)
  echo "gpu_check: quality part, $left s left: $PYTHON bench/quality_recipe.py ${args[*]}"
  if guarded "$left" "the quality part" "$PYTHON" bench/quality_recipe.py "${args[@]}"; then
    echo "frozen-encoder recipe for comparison (bench/README.md, Quality, leave-last-5 table; bench/quality-two-tower.yaml" \
         "without example age, 2 CPU workers, fp32, 8 epochs): two_tower NDCG@10 0.0879, Recall@10 0.1049; bpr 0.0510."
    echo "gpu_check: quality OK"
  else
    failed="$failed quality"
  fi
fi
if [ -n "$failed" ]; then
  echo "gpu_check: FAILED:$failed" >&2
  exit 1
fi
echo "gpu_check: OK"
