"""`accelerate launch train --config FILE [key=value ...]`: same as `vtg train ...`."""

import sys

from vtg_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
