"""The clock: a small asyncio service that keeps time and sends work to worker channels."""
