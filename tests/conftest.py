"""Shared fixtures: the family table's tiny presets (all offline), and the Hypothesis profiles.

``HYPOTHESIS_PROFILE`` picks the profile: ``default`` (a few examples per property, for every test run) or
``thorough`` (1,000 generated cases per property and family; ``make test-thorough``). Neither has a deadline
(the first call of a tiny model is slower than the rest) nor writes an example database into the repository.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

from helpers import TINY_CASES, case_id

# the `case` fixture is a plain parameter (never mutated), so reusing it across generated examples is safe
_PROFILE_DEFAULTS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("default", max_examples=15, **_PROFILE_DEFAULTS)
settings.register_profile("thorough", max_examples=1000, **_PROFILE_DEFAULTS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(params=TINY_CASES, ids=case_id)
def case(request):
    return request.param
