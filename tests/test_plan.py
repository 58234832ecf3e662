"""augzarr/plan.py: one epoch plan for every consumer. RankPlan shares an epoch over ranks with equal batch counts
and every row once; a resumed position gives exactly the rest of the uninterrupted order, for any number of workers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from augzarr.plan import RankPlan, epoch_plan, loader_order, resumed_runs, worker_runs


def epoch_rows(plan: RankPlan, epoch: int) -> np.ndarray:
    """The split's rows in the epoch's sequence: chunks in order, each window's rows in its order."""
    order, bounds = plan.windows(epoch)
    sequence = []
    for w in range(len(bounds) - 1):
        chunks = plan.window_chunks(epoch, w)
        rows = np.concatenate(
            [np.arange(c * plan.chunk_rows, min((c + 1) * plan.chunk_rows, plan.rows)) for c in chunks]
        )
        sequence.append(rows[plan.window_rows(epoch, w)])
    return np.concatenate(sequence)


@pytest.mark.parametrize(
    "rows, ranks, batch_size, drop_last",
    [
        (66, 1, 7, False),
        (66, 2, 7, False),
        (66, 3, 5, False),
        (66, 4, 8, False),
        (65, 4, 8, False),
        (64, 4, 8, False),
        (66, 2, 7, True),
        (9, 4, 2, False),
        (5, 4, 8, False),
        (66, 67, 1, False),
    ],
)
def test_ranks_serve_equal_batch_counts_and_every_row_once(rows, ranks, batch_size, drop_last):
    plan = RankPlan(
        rows, chunk_rows=8, batch_size=batch_size, buffer_chunks=2, seed=3, ranks=ranks, drop_last=drop_last
    )
    sequence = epoch_rows(plan, 1)
    assert sorted(sequence) == list(range(rows))  # the epoch's sequence holds every row once
    served = []
    for rank in range(ranks):
        spans = [plan.batch_span(rank, b) for b in range(plan.batches)]
        sizes = [stop - start for start, stop in spans]
        assert all(size == batch_size for size in sizes[:-1]) and 0 < sizes[-1] <= batch_size if sizes else True
        if drop_last:
            assert sizes[-1] == batch_size
        served += [int(r) for start, stop in spans for r in sequence[start:stop]]
    assert len(served) == len(set(served)) == plan.served_rows  # no row twice, across ranks
    step = ranks * batch_size
    left_out = rows - plan.served_rows
    if drop_last:
        assert left_out == rows % step
    else:  # only when the last step's rows are fewer than the ranks, and then only those
        assert left_out == (rows % step if rows % step < ranks else 0)


def test_an_epoch_too_small_for_a_batch_a_rank_has_none():
    assert RankPlan(66, 8, 1, 2, seed=0, ranks=67).batches == 0
    assert RankPlan(66, 8, 8, 2, seed=0, ranks=9, drop_last=True).batches == 0


def test_one_rank_cuts_the_keras_streams_batches():
    """StoreStream cuts batch i as rows [i*b, (i+1)*b) of epoch_plan's sequence; so does one rank."""
    plan = RankPlan(66, 8, 7, 2, seed=3)
    assert plan.windows(2)[0].tolist() == epoch_plan(66, 8, 2, 3, 2)[0].tolist()
    assert [plan.batch_span(0, b) for b in range(plan.batches)] == [(7 * b, min(7 * b + 7, 66)) for b in range(10)]


def test_without_a_seed_the_epoch_is_the_stored_order():
    plan = RankPlan(66, 8, 7, 2, seed=None)
    assert epoch_rows(plan, 5).tolist() == list(range(66))


def test_the_order_depends_on_seed_and_epoch_only():
    a, b = RankPlan(66, 8, 7, 2, seed=3, ranks=2), RankPlan(66, 8, 5, 2, seed=3, ranks=3)
    assert np.array_equal(epoch_rows(a, 1), epoch_rows(b, 1))  # the sequence is shared out, not changed, by ranks
    assert not np.array_equal(epoch_rows(a, 1), epoch_rows(a, 2))
    assert not np.array_equal(epoch_rows(a, 1), epoch_rows(RankPlan(66, 8, 7, 2, seed=4), 1))


def test_workers_take_contiguous_runs_and_the_loader_takes_them_in_turn():
    assert worker_runs(5, 2) == [range(0, 2), range(2, 5)]
    assert [b for _, b in loader_order(worker_runs(5, 2))] == [0, 2, 1, 3, 4]
    assert [w for w, _ in loader_order(worker_runs(7, 3))] == [0, 1, 2, 0, 1, 2, 2]
    for batches, workers in itertools.product(range(0, 12), range(1, 6)):
        runs = worker_runs(batches, workers)
        assert sorted(b for run in runs for b in run) == list(range(batches))


@pytest.mark.parametrize("batches", [0, 1, 5, 10, 13])
def test_a_resumed_position_yields_exactly_the_rest_for_any_number_of_workers(batches):
    for before, now in itertools.product(range(1, 5), range(1, 5)):
        uninterrupted = [b for _, b in loader_order(worker_runs(batches, before))]
        for served in range(batches + 1):
            runs = resumed_runs(batches, served, before, now)
            assert len(runs) == now
            if served:  # (a pass from the start is a new loop: the present workers' own order, below)
                assert [b for _, b in loader_order(runs)] == uninterrupted[served:], (before, now, served)
            if now == before:  # each worker keeps a contiguous run: it reads only its own windows
                assert all(run == list(range(run[0], run[0] + len(run))) for run in runs if run)
        fresh = [b for _, b in loader_order(worker_runs(batches, now))]
        assert [b for _, b in loader_order(resumed_runs(batches, 0, before, now))] == fresh


def test_a_position_outside_the_epoch_is_refused():
    with pytest.raises(ValueError, match="outside an epoch of 5"):
        resumed_runs(5, 6, 2, 2)
