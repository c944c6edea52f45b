"""`python -m headstart ...`: the same as the `headstart` command."""

from .launch import run

run()
