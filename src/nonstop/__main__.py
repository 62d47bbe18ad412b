"""`python -m nonstop`: the same as the `nonstop` command."""

from nonstop.cli import main

main()
