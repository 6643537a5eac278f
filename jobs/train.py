"""Ray job entrypoint for the training stage alone (same flags as `recbatch train`).

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml --working-dir . \
        -- python jobs/train.py --config cluster/presets/gpu-bert-large-zero3.yaml
"""

import sys

from recbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
