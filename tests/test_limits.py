"""The edge's token buckets (consumers/limits.py), on a clock the test controls."""

from consumers.limits import FrameLimits, TokenBucket


def test_a_burst_passes_then_the_rate():
    bucket = TokenBucket(burst=3, per_s=2, updated=100.0)
    assert [bucket.take(now=100.0) for _ in range(3)] == [None, None, None]
    assert bucket.take(now=100.0) == 0.5  # one token is half a second away
    assert bucket.take(now=100.5) is None
    assert bucket.take(now=100.5) == 0.5


def test_an_idle_bucket_fills_up_to_its_burst_only():
    bucket = TokenBucket(burst=2, per_s=1, updated=0.0)
    bucket.take(now=0.0), bucket.take(now=0.0)
    assert [bucket.take(now=1000.0) for _ in range(3)] == [None, None, 1.0]


def test_only_the_limited_frame_types_are_counted():
    limits = FrameLimits({"chat.history": "reads"}, {"reads": (1, 1)})
    assert limits.take("chat.history") is None
    assert limits.take("chat.history") is not None
    assert all(limits.take("chat.message") is None for _ in range(100))
