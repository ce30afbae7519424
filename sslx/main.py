"""``python -m sslx.main --config=... --workdir=...`` trains and evaluates one experiment.

The same as ``python -m sslx train``; kept because it is the name every launcher and notebook
uses. The command itself lives in sslx/cli/train.py.
"""

import sys

from sslx import cli

if __name__ == "__main__":
  cli.dispatch([sys.argv[0], "train", *sys.argv[1:]])
