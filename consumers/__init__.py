"""The socket edge: authenticate, join and leave groups, forward frames to a worker channel, relay.

Nothing in this package imports models or touches the ORM; business logic lives in ``workers/``.
"""
