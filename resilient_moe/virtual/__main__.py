"""``python -m resilient_moe.virtual``: a compile worker (see worker.py); the parent starts it."""

from .worker import main

main()
