"""`python -m minigate` is the `minigate` command."""

from minigate.cli import app

app()
