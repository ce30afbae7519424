"""Command-line tools, one module per command (``python -m sslx <command>``)."""
