"""``python -m sslx COMMAND [flags]``: the command-line tools in sslx/cli/."""

import sys

from sslx import cli

if __name__ == "__main__":
  cli.dispatch(sys.argv)
