#!/usr/bin/env bash
# GPU smoke check for the training stack (< 5 minutes on one CUDA GPU).
#
# Runs a few DeepSpeed ZeRO-2 steps of the MiniLM two-tower on 1 GPU with the
# NCCL backend, in fp32 (reference), fp16 (dynamic loss scaling) and bf16, and
# prints the median step time and peak GPU memory of each. On a machine with
# no CUDA GPU it says so and exits 0.
#
#   bash bench/gpu_check.sh                 # uses .venv/bin/python when present
#   PYTHON=python3 STEPS=20 BATCH=128 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export STEPS="${STEPS:-12}" BATCH="${BATCH:-64}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/recbatch/torch_extensions}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); nothing to check."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

exec timeout 290 "$PYTHON" - <<'PY'
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
print("gpu_check: OK")
PY
