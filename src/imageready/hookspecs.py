"""Hooks imageready adds to pytest (implement them in a conftest.py or a plugin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from imageready.facts import FactsProvider
    from imageready.options import RunOptions


@pytest.hookspec(firstresult=True)
def pytest_imageready_facts_provider(config: pytest.Config, options: RunOptions) -> FactsProvider | None:
    """Return the object that gathers VM facts for this run.

    ``options`` is the run's command line, parsed (``imageready.options.RunOptions``); an
    implementation may take only the arguments it needs. The default talks to Azure and to each
    guest. A conftest may return another provider, for example one that replays facts recorded
    earlier.
    """
