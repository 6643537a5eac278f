"""Ray job entrypoint for the nightly run.

    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml \
        --working-dir . -- python jobs/nightly.py --config cluster/configs/production.yaml

Inside a submitted job Ray sets RAY_ADDRESS, and the pipeline joins that
cluster; run directly, it starts a local Ray. Same flags as `recbatch nightly`.
"""

import sys

from recbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
