"""The ``tcms`` command line.  The core's commands live here (``config``, ``keys``,
``verify``, ``db``, ``tx``, ``serve``); each package's live with the package
(``tss/cli.py``, ``ttp/cli.py``, ``dc/cli.py``, ``gateway/cli.py``, ``tsrg/cli.py``), which
adds them through the ``tcms.plugins`` entry points (see :mod:`tcms.cli.registry`)."""

from tcms.cli.app import main

__all__ = ["main"]
