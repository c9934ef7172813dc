"""``python -m towtruck``: the same as the ``towtruck`` command."""

from .cli import main

main()
