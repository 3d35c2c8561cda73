"""`python -m httptrace`: the same as the `httptrace` console script."""
import sys

from httptrace.cli import main

if __name__ == "__main__":
    sys.exit(main())
