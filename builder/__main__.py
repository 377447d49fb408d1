"""`python -m builder` runs the `tsr` command line."""

from builder.cli import cli

if __name__ == "__main__":
    cli(prog_name="tsr")
