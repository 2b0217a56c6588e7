"""The benchmark as a script: `python benchmarks/run.py [options]`, the same as `python -m k2actors bench`."""

import sys

from k2actors.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
