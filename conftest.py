"""Repository-local wiring only: the harness itself arrives through the `imageready` pytest11
entry point (src/imageready/plugin.py), so `pytest --vm` works from any folder."""
