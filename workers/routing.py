"""Worker channel name -> the SyncConsumer that owns it (``python manage.py runworker <names>``)."""

from project import protocol

from .chat import ChatWorker

worker_channels = {
    protocol.CHAT_WORKER: ChatWorker.as_asgi(),
}
