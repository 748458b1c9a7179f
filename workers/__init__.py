"""Business logic and data: models, validation, persistence, rate limits, history, status."""
