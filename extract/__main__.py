"""`python extract …` / `accelerate launch extract …`: same as `vtg extract …`."""

import sys

from vtg_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
