"""``python -m kmnlib.study`` (see :mod:`kmnlib.study.runner`)."""
import sys

from kmnlib.study.runner import main

sys.exit(main())
