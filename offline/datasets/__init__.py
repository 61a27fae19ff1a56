"""Dataset readers and downloaders; all yield `Clip` records."""
