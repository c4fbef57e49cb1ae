"""``python -m tcms.cli``: the same as the ``tcms`` command."""

from tcms.cli.app import main

main()
