"""The module's own self-test class (DareFuseSlicerTest), run headless on slicer-core as Slicer would run it.

It needs the bundled model (Resources/Models) and sample case (Resources/SampleData); until both are in the
repository it is skipped with the reason, so a missing one cannot pass silently as a success.
"""
import unittest

import pytest

from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.logic import bundled_model_path


def _missing():
    from DareFuseSlicerLib.phantoms import sample_case_paths

    reasons = []
    if not bundled_model_path().is_file():
        reasons.append(f"no bundled model at {bundled_model_path()}")
    try:
        sample_case_paths()
    except InputError as error:
        reasons.append(str(error))
    return "; ".join(reasons)


@pytest.mark.slow  # the whole sample case through the network on the CPU
def test_module_self_test_passes_headless():
    missing = _missing()
    if missing:
        pytest.skip(missing)
    import DareFuseSlicer

    result = unittest.TextTestRunner(verbosity=2).run(DareFuseSlicer.DareFuseSlicerTest("runTest"))
    assert result.wasSuccessful(), [text for _, text in result.failures + result.errors]
