"""The scheduler's boundary math and skip logic, and the job that asks for reports between ticks."""

import asyncio
import time

from project import protocol
from scheduler.clock import NS_PER_S, Tick, due_tick, next_boundary_ns
from scheduler.jobs import ApplyReports, default_jobs


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


# --- the half-second apply ------------------------------------------------------------------


class Recorder:
    """What ``ApplyReports`` needs of a scheduler: whether it leads, and a send."""

    def __init__(self) -> None:
        self.leading = True
        self.sent: list[tuple[int, str, dict]] = []

    def leads(self) -> bool:
        return self.leading

    async def send(self, channel: str, message: dict) -> None:
        self.sent.append((time.time_ns(), channel, message))


async def test_the_reports_are_applied_half_a_second_after_each_tick():
    job, scheduler = ApplyReports(), Recorder()
    tick_ns = time.time_ns()

    await job.run(scheduler, Tick(tick_ns=tick_ns, skipped=0), token=7)  # type: ignore[arg-type]
    assert scheduler.sent == []  # not at the tick: half a second after it
    await asyncio.gather(*job.pending)

    [(sent_ns, channel, message)] = scheduler.sent
    assert channel == protocol.STATUS_WORKER
    assert message == {"type": protocol.STATUS_APPLY, "at_ns": tick_ns + NS_PER_S // 2}
    assert sent_ns >= tick_ns + NS_PER_S // 2
    assert not job.pending  # not held once sent


async def test_a_scheduler_that_lost_the_lease_meanwhile_does_not_ask():
    job, scheduler = ApplyReports(), Recorder()
    await job.run(scheduler, Tick(tick_ns=time.time_ns(), skipped=0), token=7)  # type: ignore[arg-type]
    scheduler.leading = False

    await asyncio.gather(*job.pending)

    assert scheduler.sent == []


def test_the_apply_job_runs_every_second_after_the_tick():
    names = [job.name for job in default_jobs()]
    assert names.index("apply-reports") > names.index("status-tick")
    assert next(job for job in default_jobs() if job.name == "apply-reports").every_s == 1
