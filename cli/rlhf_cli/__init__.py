"""The ``rlhf`` command: above the operator and the workers, it uses both (the workers lazily,
so an operator-only install still validates, renders and runs the operator)."""

from .cli import main

__all__ = ["main"]
