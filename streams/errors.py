"""The one base class of stockflow's own exceptions."""

from __future__ import annotations


class StockflowError(Exception):
    """Raised by stockflow for a condition it recognises and explains (unreadable bytes, refused
    input, a missing tool, a bad dashboard parameter), as opposed to a bug.

    ``except StockflowError`` catches every such error; each subclass keeps the builtin base its
    callers already catch (``ValueError``, ``RuntimeError``). Errors that refuse input carry the
    refusal's ``reason`` (``streams.contract.reasons.Reason``).
    """
