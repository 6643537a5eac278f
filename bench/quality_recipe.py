"""Train a two-tower recipe on ml-latest-small leave-last-5 and score it on test, in one command.

    .venv/bin/python bench/quality_recipe.py --config cluster/presets/gpu-minilm-finetune-ml.yaml \\
        [--reference model.freeze_encoder=true] [--set KEY=VALUE ...] [--root DIR] [--data DIR] \\
        [--baselines most_popular,bpr]

The three commands of bench/README.md's quality section in one process, for
the leave-last-5 protocol only: ``quality.py``'s snapshot (``protocol_config``),
the recipe trained on it (``recbatch.train.trainer.train``, the code of
``recbatch train``), the popularity prior picked on the validation carve-out
(``quality.tune_scoring``), then the test split scored as ``quality.py
--model`` scores it, beside the baselines named (fitted in the same run).

``--reference KEY=VALUE`` (repeatable) also trains the same recipe with these
overrides, as a reference measured in the same run: ``bench/gpu_check.sh``
passes ``model.freeze_encoder=true`` to put the frozen encoder beside the
fine-tuned one. ``--set KEY=VALUE`` (repeatable) overrides both; this is how
the code path is checked on a CPU box in minutes (``--set train.use_gpu=false
--set train.max_steps=2 ...``) with the same command the GPU check runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from bench_train import steady_samples_per_s
from quality import REPO, evaluate_two_tower, print_table, protocol_config, run_baselines, tune_scoring

# imported after `quality`, which puts this checkout first on sys.path
from recbatch.config import load_config, parse_override  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.layout import local_path  # noqa: E402
from recbatch.model.artifact import read_model_card  # noqa: E402
from recbatch.train.trainer import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the recipe: a recbatch config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every recipe trained (repeatable)")
    parser.add_argument("--reference", action="append", default=[], metavar="KEY=VALUE",
                        help="also train the recipe with these overrides, as the same-run reference (repeatable)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    parser.add_argument("--root", default="/tmp/recbatch-quality-recipe")
    parser.add_argument("--baselines", default="most_popular,bpr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(args.root)
    cfg = protocol_config("leave_last_n", args.data, root)
    started = time.perf_counter()
    snapshot = ingest(cfg)
    counts = snapshot.counts
    print(f"== leave_last_n: snapshot {snapshot.hash} ({time.perf_counter() - started:.1f} s) train {counts['train']} "
          f"validation {counts['validation']} test {counts['test']} cold items {counts.get('cold_items')}", flush=True)
    results, eval_seconds = run_baselines(args.baselines.split(","), snapshot, cfg, root)

    common = {**dict(parse_override(o) for o in args.overrides), "root": str(root)}
    recipes = {"recipe": common}
    if args.reference:
        recipes["reference"] = {**common, **dict(parse_override(o) for o in args.reference)}
    trained = {}
    for name, overrides in recipes.items():
        recipe = load_config(args.config, overrides)
        started = time.perf_counter()
        model_dir = local_path(train(recipe, snapshot))  # --root is a local folder
        seconds = time.perf_counter() - started
        card = read_model_card(model_dir)
        trained[name] = (seconds, card["step"], steady_samples_per_s(model_dir))
        print(f"  {name:<13} trained {card['step']} steps in {seconds:.1f} s ({trained[name][2]:.0f} samples/s "
              f"steady), validation {card['metrics']}: {model_dir}", flush=True)
        settings = tune_scoring(cfg, snapshot, str(model_dir), "validation", root)
        result, eval_seconds[name] = evaluate_two_tower(cfg, snapshot, model_dir, settings, name=name)
        results.append(result)

    print_table(results, eval_seconds, two_towers=set(recipes))
    print(f"recipe: {args.config} {' '.join(args.overrides)}")
    if args.reference:
        print(f"reference: the same with {' '.join(args.reference)}")
    for name, (seconds, steps, rate) in trained.items():
        metrics = next(r for r in results if r.name == name).metrics()
        print(f"{name}: NDCG@10 {metrics['ndcg@10']:.4f}  Recall@10 {metrics['recall@10']:.4f}  "
              f"cold Recall@10 {metrics['cold/recall@10']:.4f}  (trained {steps} steps in {seconds:.0f} s, "
              f"{rate:.0f} samples/s)")


if __name__ == "__main__":
    main()
