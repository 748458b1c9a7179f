"""Every Redis key that more than one process reads or writes, named in one place.

What must outlive a process lives under these keys (docs/architecture.md, "State and where
it lives"). If Redis restarts empty they all vanish together, which the feed reads as "the
sequence restarts" and answers with a new epoch.
"""

PREFIX = "fleetchat:"

# The scheduler's lease: value "<holder id> <fencing token>", set-if-absent with a TTL.
SCHEDULER_LEASE = PREFIX + "scheduler:lease"
# INCR'd on every new lease: the fencing token, larger for every later leader.
SCHEDULER_FENCE = PREFIX + "scheduler:fence"

# The status feed (workers/feed.py): one hash with epoch, seq, the highest token and tick
# admitted, and the last update (its text and whether it is known to have been sent).
STATUS_FEED = PREFIX + "feed:status"
# Machines announced as changing that no stored update has carried yet: name -> version.
STATUS_FEED_PENDING = PREFIX + "feed:status:pending"
# The fleet as the stored updates left it (project/statusviews.py), written with each update:
# name -> compact row, name -> whole machine, and names in order (sorted sets, score 0), all
# and per state.
STATUS_ROWS = PREFIX + "feed:status:rows"
STATUS_MACHINES = PREFIX + "feed:status:machines"
STATUS_NAMES = PREFIX + "feed:status:names"
STATUS_STATE_NAMES = PREFIX + "feed:status:state:"
# The views some web process shows (group -> view), each until its deadline (sorted set, ms),
# and the last update's frame for each view (group -> text), sent again if its worker died.
STATUS_VIEWS = PREFIX + "feed:status:views"
STATUS_VIEW_DEADLINES = PREFIX + "feed:status:view-deadlines"
STATUS_LAST_VIEWS = PREFIX + "feed:status:last-views"

# Agent reports (and removals) answered 202: a stream the status workers read as a group.
REPORTS_STREAM = PREFIX + "reports"
REPORTS_WAITING = PREFIX + "reports:waiting"  # reports in the stream not yet acknowledged
REPORTS_GROUP = "status-workers"

# Fair shares (consumers/limits.py): each user's open sockets (a sorted set of socket channel
# names scored by when their entry expires) and their handshakes in the current second.
USER_SOCKETS = PREFIX + "user-sockets:"
USER_JOINS = PREFIX + "user-joins:"

# Live instances of each process kind: a sorted set of instance ids scored by the time
# (ms) each last said it was alive.
INSTANCES = PREFIX + "instances:"
SCHEDULER_INSTANCES = INSTANCES + "scheduler"
STATUS_WORKER_INSTANCES = INSTANCES + "status-worker"
