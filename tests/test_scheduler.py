"""The scheduler's boundary math and skip logic."""

from scheduler.clock import NS_PER_S, Tick, due_tick, next_boundary_ns


def test_next_boundary_is_strictly_after_now():
    assert next_boundary_ns(0, NS_PER_S) == NS_PER_S
    assert next_boundary_ns(5 * NS_PER_S, NS_PER_S) == 6 * NS_PER_S
    assert next_boundary_ns(5 * NS_PER_S + 1, NS_PER_S) == 6 * NS_PER_S
    assert next_boundary_ns(6 * NS_PER_S - 1, NS_PER_S) == 6 * NS_PER_S


def test_woken_early_means_sleep_again():
    assert due_tick(now_ns=10 * NS_PER_S - 1, expected_ns=10 * NS_PER_S, period_ns=NS_PER_S) is None


def test_on_time_tick_skips_nothing():
    tick = due_tick(now_ns=10 * NS_PER_S + 3_000_000, expected_ns=10 * NS_PER_S, period_ns=NS_PER_S)
    assert tick == Tick(tick_ns=10 * NS_PER_S, skipped=0)


def test_after_a_stall_one_tick_for_the_latest_boundary():
    # Due at 10 s, but the process only woke at 13.4 s: ticks 10, 11, 12 are skipped, 13 fires.
    tick = due_tick(now_ns=13 * NS_PER_S + 400_000_000, expected_ns=10 * NS_PER_S, period_ns=NS_PER_S)
    assert tick == Tick(tick_ns=13 * NS_PER_S, skipped=3)


def test_exactly_on_a_later_boundary():
    tick = due_tick(now_ns=12 * NS_PER_S, expected_ns=10 * NS_PER_S, period_ns=NS_PER_S)
    assert tick == Tick(tick_ns=12 * NS_PER_S, skipped=2)
