"""The pruning schedule: step positions inside the pruning phase, which step is due, the cubic ramp of the cut."""

import pytest

from yolo_prune.methods.schedule import Schedule
from yolo_prune.methods.settings import PruneSettings


def schedule(epochs=10, **kw):
    return Schedule(PruneSettings(**{"flops": 0.4, "warmup_frac": 0.1, "prune_frac": 0.6, **kw}).validate(), epochs)


def test_positions_fill_the_pruning_phase():
    s = schedule(steps_per_epoch=4)
    assert len(s.positions) == 20  # 4 a epoch over epochs 1..6
    assert s.positions[0] > 1.0 and s.positions[-1] == pytest.approx(6.0)
    assert all(b > a for a, b in zip(s.positions, s.positions[1:]))
    assert len(schedule(epochs=1, steps_per_epoch=1).positions) == 1  # at least one step


def test_due_gives_the_latest_step_not_done():
    s = schedule(steps_per_epoch=1)  # steps at 2, 3, 4, 5, 6
    assert s.due(1.99, 0) is None
    assert s.due(2.0, 0) == 0
    assert s.due(2.5, 1) is None  # step 0 done, step 1 not due
    assert s.due(4.2, 1) == 2  # a late call catches up to the latest due step
    assert s.due(9.0, 5) is None  # all done


def test_cut_ramps_cubically_to_the_target():
    s = schedule(steps_per_epoch=2)
    cuts = [s.cut(k) for k in range(len(s.positions))]
    assert cuts[-1] == pytest.approx(0.4) and all(b > a for a, b in zip(cuts, cuts[1:]))
    assert cuts[0] > 0.4 / len(cuts)  # faster than linear early on
    assert s.progress(len(s.positions) - 1) == 1.0


def test_phase_is_the_continuous_progress_through_the_pruning_phase():
    s = schedule(steps_per_epoch=1)  # phase from epoch 1 to 6, steps at 2 ... 6
    assert s.phase(0.5) == 0.0 and s.phase(3.5) == pytest.approx(0.5) and s.phase(8.0) == 1.0
    assert all(s.phase(p) == pytest.approx(s.progress(k)) for k, p in enumerate(s.positions))
