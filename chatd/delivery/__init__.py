"""Delivery: when frames leave (``outbox``: gathered, sent now, held) and how they are framed (``frames``)."""
