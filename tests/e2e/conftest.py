"""Every test in this folder is marked slow: `make test-fast` (pytest -m "not slow") leaves them out."""

import pytest


def pytest_itemcollected(item):
    # Called through the item's own folder's conftests only: this one sees just the tests under e2e/.
    item.add_marker(pytest.mark.slow)
