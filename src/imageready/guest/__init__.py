"""The guest transports behind one interface (see base.py)."""
