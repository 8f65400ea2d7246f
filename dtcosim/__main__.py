"""``python -m dtcosim COMMAND ...``: the same as the ``dtcosim`` console command."""

from .cli import main

main()
