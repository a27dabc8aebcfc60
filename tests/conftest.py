"""Shared pytest setup: slow end-to-end tests run only with --runslow or RUN_SLOW=1."""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end test (run with --runslow or RUN_SLOW=1)")
    # MindSpore refuses set_device once any kernel has run in the process, and test modules call it
    # (as the entry points do): pin the device before the first test so later calls are no-ops.
    import mindspore as ms

    ms.set_device("CPU")
    # Synchronous PYNATIVE is many times faster for the small eager ops of the tests on CPU, and
    # must also be set before the first kernel.
    ms.runtime.launch_blocking()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
