"""Repository-local wiring only: the harness itself arrives through the `imageready` pytest11
entry point (src/imageready/plugin.py), so `pytest --vm` works from any folder."""

# pytester for the project's own plugin tests (tests/plugin, tests/reports); a pytest_plugins list
# is only honoured in the rootdir's conftest
pytest_plugins = ["pytester"]
