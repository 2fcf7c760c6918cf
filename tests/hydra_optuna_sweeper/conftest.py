"""sweeplr's marks on Hydra's copied tests: those that run sweeps (the ones parametrized with
`plugins`, most of them in subprocesses) are `slow`, like sweeplr's own end-to-end tests."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "plugins" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
