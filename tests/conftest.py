"""Shared test configuration: hypothesis profiles and small helpers."""

import os

from hypothesis import HealthCheck, settings

# At least 100 examples per law (the bar). In CI the examples are derandomized so
# that a red run is reproducible; locally they vary run to run and find new cases.
settings.register_profile(
    "default",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")
