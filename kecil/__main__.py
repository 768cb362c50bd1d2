"""`python -m kecil` is the `kecil` command."""

from kecil.cli import main

main()
