"""`recbatch train`: fine-tune the two-tower model on a snapshot (Ray Train + DeepSpeed).

    recbatch train --root runs/demo                                  # latest snapshot
    recbatch train --snapshot runs/demo/snapshots/<hash> --workers 2 --zero-stage 3 --max-steps 200
    recbatch train --root runs/demo --resume                         # continue the last run of that snapshot
    recbatch train --root s3://bucket/recs --set storage.endpoint=...  # an object-store root
    recbatch train --config cluster/presets/gpu-bert-large-zero3.yaml

Prints the published model artifact folder (``models/<model_version>``), a local path
or ``s3://...`` on an object-store root (its inputs and checkpoints are there too).
"""

from __future__ import annotations

import argparse
import json

from recbatch.config import Config

HELP = "fine-tune the two-tower model on a snapshot with Ray Train + DeepSpeed; publish the model artifact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", help="snapshot folder (default: the latest under --root)")
    p.add_argument("--resume", action="store_true", help="continue the most recent run of this snapshot from its checkpoint")
    p.add_argument("--workers", type=int, help="Ray Train workers (config key train.num_workers)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage (train.zero_stage)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (train.max_steps)")
    p.add_argument("--epochs", type=int, help="passes over the training interactions (train.epochs)")
    p.add_argument("--batch-size", type=int, help="examples per worker per micro-batch (train.batch_size)")
    p.add_argument("--encoder", help="'minilm', a local HF directory or a hub id (model.encoder)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], help="train.precision")
    p.add_argument("--gpu", choices=["auto", "true", "false"], help="train.use_gpu")


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "train.num_workers": args.workers,
        "train.zero_stage": args.zero_stage,
        "train.max_steps": args.max_steps,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "model.encoder": args.encoder,
        "train.precision": args.precision,
        "train.use_gpu": args.gpu,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.commands.inputs import snapshot_from
    from recbatch.fs import check_access
    from recbatch.layout import RunLayout
    from recbatch.model.artifact import read_model_card
    from recbatch.train.trainer import train

    layout = RunLayout.of(cfg.root, cfg.storage)
    check_access(layout.at.root)  # wrong credentials or bucket: refused, naming the bucket (exit 9)
    artifact = train(cfg, snapshot_from(args.snapshot, layout, cfg.storage), resume=args.resume)
    card = read_model_card(artifact)
    print(json.dumps({"model": artifact.uri, "model_version": card["model_version"], "step": card["step"],
                      "metrics": card["metrics"]}, indent=2))
    return 0
