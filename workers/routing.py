"""Worker channel name -> the SyncConsumer that owns it (``python manage.py runworker <names>``)."""

from project import protocol

from .chat import ChatWorker
from .status import StatusWorker

worker_channels = {
    protocol.CHAT_WORKER: ChatWorker.as_asgi(),
    protocol.STATUS_WORKER: StatusWorker.as_asgi(),
}
