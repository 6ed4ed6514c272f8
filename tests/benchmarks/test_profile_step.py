"""The CPU profile's arithmetic: how much of a step the recorded ops cover."""

from experiments.benchmarks.cpu.profile_step import coverage


def test_coverage_merges_overlapping_spans_and_counts_gaps():
    # Two threads' ops overlap (0-10, 5-15), then a gap (15-20) where only Eigen ran.
    assert coverage([(20, 30), (0, 10), (5, 15)]) == (30, 25)
    assert coverage([(0, 10), (2, 3)]) == (10, 10)
    assert coverage([]) == (0, 0)
