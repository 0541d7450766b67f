"""`python -m palette ARGS` is `palette ARGS`, e.g. `python -m palette bench --quick`."""

from .cli import main

main()
