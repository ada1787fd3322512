"""The methods' reduce_ hooks under two gloo processes, on the updates the default distributed
contract run does not reach (``train.distributed_checks.CASES``: rewiring, dense regrowth,
per-rank input ranges, subsampled calibration, policy rewards, ranks without training rows, a
global RNG that differs at attach), each trained through the real Trainer with the agreement
check after every step and after finalize."""

from spikecompress.compress import METHODS
from spikecompress.train.distributed_checks import CASES
from spikecompress.train.distributed_contract import spawn


def test_cases_name_registered_methods_and_knobs_they_take():
    for method, knobs, condition in CASES.values():
        METHODS[method](**knobs)  # a bad knob would fail here, not as a divergence
        assert condition in (None, "scale", "reseed")


def test_every_case_agrees_on_every_rank_after_every_step_and_finalize():
    results = spawn("spikecompress.train.distributed_checks:check_cases", (list(CASES),), 2, 120)
    assert results[0] == results[1]
    failed = {name: error for name, error in results[0].items() if error is not None}
    assert not failed, failed
    assert set(results[0]) == set(CASES)
