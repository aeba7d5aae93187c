"""`python -m minigate.cli` is the `minigate` command, as `python -m minigate` is."""

from minigate.cli import app

if __name__ == "__main__":  # the call log's sealing workers import the main module too, and must not run the app
    app()
