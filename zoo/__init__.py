"""genpipe's library: models, data, storage, tracking and the embedded stack."""

__version__ = "0.1.0"
