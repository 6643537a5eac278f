"""Ray job entrypoint for the scoring stage alone (same flags as `recbatch score`)."""

import sys

from recbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
