"""The seed's settings: our project's, with the channel layer as the blog post configured it
(channels-redis defaults: capacity 100, redis-py's default pool)."""

from project.settings import *  # noqa: F403
from project.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout only keeps redis-py 8 from killing idle receives (see project.settings);
        # everything else is the default the seed ran with.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}]},
    },
}
