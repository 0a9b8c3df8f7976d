"""``python -m lstmx``: the lstmx command line (see :mod:`lstmx.cli`)."""
import sys

from lstmx.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m lstmx"))
