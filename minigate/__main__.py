"""`python -m minigate` is the `minigate` command."""

from minigate.cli import app

if __name__ == "__main__":  # the call log's sealing workers import this module too, and must not run the app
    app()
