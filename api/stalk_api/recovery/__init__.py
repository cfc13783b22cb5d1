"""Recovering accepted tasks whose messages Redis lost: the decision (``rules``, no I/O) and the
Redis side of its evidence (``presence``), and one pass around them (``recoverer``)."""
