"""The status feed's state in Redis (workers/feed.py), against a private Redis."""

from __future__ import annotations

import pytest

from project import keys
from workers.feed import Admission, FeedStore

from .conftest import TEST_LEASE_TOKEN, lead

TOKEN = TEST_LEASE_TOKEN


@pytest.fixture
def client(leading_redis):
    return leading_redis


@pytest.fixture
def feed(client):
    return FeedStore(client)


def test_epoch_is_made_once_and_kept(feed, client):
    epoch, seq = feed.current()

    admission = feed.admit(TOKEN, 1000)
    feed.store(admission, "update 1", {})

    assert seq == 0
    assert FeedStore(client).current() == (epoch, 1)


def test_admission_reads_the_current_epoch_and_seq(feed):
    epoch, _ = feed.current()
    feed.store(feed.admit(TOKEN, 1000), "update 1", {})

    admission = feed.admit(TOKEN, 2000)

    assert (admission.epoch, admission.seq) == (epoch, 1)


def test_store_succeeds_only_with_the_seq_read_at_admission(feed):
    admission = feed.admit(TOKEN, 1000)

    first = feed.store(admission, "update 1", {})
    second = feed.store(admission, "update 1 again", {})

    assert (first, second) == (True, False)
    assert feed.current()[1] == 1


def test_of_two_workers_admitted_before_either_stored_only_one_stores(feed, client):
    other = FeedStore(client)
    mine = feed.admit(TOKEN, 1000)
    theirs = other.admit(TOKEN, 2000)

    stored = (other.store(theirs, "theirs", {}), feed.store(mine, "mine", {}))

    assert stored == (True, False)
    assert feed.current()[1] == 1


def test_store_clears_the_pending_changes_it_carried(feed):
    feed.announce({"m1", "m2"})
    carried = feed.pending()

    feed.store(feed.admit(TOKEN, 1000), "update 1", carried)

    assert feed.pending() == {}


def test_a_change_announced_again_before_the_store_stays_pending(feed):
    feed.announce({"m1", "m2"})
    carried = feed.pending()
    feed.announce({"m1"})

    feed.store(feed.admit(TOKEN, 1000), "update 1", carried)

    assert feed.pending() == {"m1": 2}


def test_a_store_that_lost_the_race_leaves_its_changes_pending(feed):
    admission = feed.admit(TOKEN, 1000)
    feed.store(admission, "update 1", {})
    feed.announce({"m1"})

    feed.store(admission, "update 1 again", feed.pending())

    assert feed.pending() == {"m1": 1}


def test_admit_refuses_a_tick_not_newer_than_the_last_admitted(feed):
    feed.admit(TOKEN, 1000)

    assert feed.admit(TOKEN, 1000) == "repeat"
    assert feed.admit(TOKEN, 999) == "repeat"
    assert isinstance(feed.admit(TOKEN, 1001), Admission)


def test_admit_refuses_a_token_older_than_one_admitted(feed, client):
    lead(client, 2)
    feed.admit(2, 1000)
    lead(client, 1)

    assert feed.admit(1, 2000) == "stale_token"


def test_admit_refuses_a_token_that_is_not_the_leases(feed, client):
    lead(client, 2)

    assert feed.admit(1, 1000) == "not_leader"


def test_admit_refuses_when_nobody_holds_the_lease(feed, client):
    client.delete(keys.SCHEDULER_LEASE)

    assert feed.admit(TOKEN, 1000) == "no_leader"


def test_a_refused_tick_does_not_count_as_the_last_admitted(feed, client):
    lead(client, 2)
    feed.admit(1, 2000)

    assert isinstance(feed.admit(2, 1000), Admission)


def test_admission_hands_on_an_update_stored_but_not_sent(feed):
    feed.store(feed.admit(TOKEN, 1000), "update 1", {})

    admission = feed.admit(TOKEN, 2000)

    assert (admission.seq, admission.unsent_text) == (1, "update 1")


def test_an_update_marked_sent_is_not_handed_on(feed):
    feed.store(feed.admit(TOKEN, 1000), "update 1", {})
    feed.mark_sent(1)

    assert feed.admit(TOKEN, 2000).unsent_text is None


def test_mark_sent_never_moves_back(feed):
    feed.store(feed.admit(TOKEN, 1000), "update 1", {})
    feed.mark_sent(1)
    feed.store(feed.admit(TOKEN, 2000), "update 2", {})
    feed.mark_sent(2)
    feed.mark_sent(1)

    assert feed.admit(TOKEN, 3000).unsent_text is None


def test_a_flushed_redis_gives_a_new_epoch_and_restarts_seq(feed, client):
    before, _ = feed.current()
    feed.store(feed.admit(TOKEN, 1000), "update 1", {})
    client.flushall()
    lead(client, TOKEN)

    admission = feed.admit(TOKEN, 2000)

    assert admission.epoch != before
    assert (admission.seq, admission.unsent_text) == (0, None)
    assert feed.current() == (admission.epoch, 0)
