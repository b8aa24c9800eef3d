"""Fixtures of the evaluation tests (helpers in tests/helpers/synthetic_trials.py; the tiny trial fixtures are in
tests/conftest.py, shared with the exporter tests)."""

import pytest
import synthetic_trials


@pytest.fixture(scope="module")
def page_trial(tmp_path_factory):
    """A trial folder with videos, an animated model, logs and an eval.json, and its written result page."""
    from fourdfy.evaluation.page import write_result_page

    built = synthetic_trials.build_page_trial(tmp_path_factory.mktemp("page"))
    write_result_page(built.trial)
    return built
