"""`rlhf convert`: an OpenRLHF training command as an RLHFJob (work in progress)."""

from __future__ import annotations

import argparse


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="print an OpenRLHF training command as an RLHFJob")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: print("rlhf convert: not implemented yet", file=__import__("sys").stderr) or 3)
