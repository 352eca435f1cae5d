"""The plugin's own test: USP's conformance checks (run with `python -m pytest`)."""

from usp.testing import check_kernel
from usp_ewma_kernel import EWMA


def test_ewma_passes_check_kernel():
    report = check_kernel(EWMA)
    assert "fit_honoured" in report.passed
