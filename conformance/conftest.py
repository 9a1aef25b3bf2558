"""Registers the conformance plugin for every suite under conformance/."""

from conformance.plugin import (  # noqa: F401 - pytest finds hooks and fixtures by name here
    consoles,
    probe,
    probe_kernel,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_sessionfinish,
    pytest_terminal_summary,
    target,
)
