"""Where genpipe finds its object store and tracking server: one place, read from the environment.

The same variables are set by `genpipe up` (embedded mode) and by Kubernetes Secrets /
ConfigMaps on a cluster (see pipelines/platform.py), so components never take credentials
as pipeline parameters (those would be stored in the compiled YAML and the KFP database).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from zoo.errors import ConfigError

ENV_S3_ENDPOINT = "GENPIPE_S3_ENDPOINT"
ENV_BUCKET = "GENPIPE_BUCKET"
ENV_HOME = "GENPIPE_HOME"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
DEFAULT_BUCKET = "genpipe"


def state_dir() -> Path:
    """The embedded stack's state directory (data, logs, credentials)."""
    return Path(os.environ.get(ENV_HOME, Path.home() / ".genpipe")).expanduser()


@dataclass(frozen=True)
class Settings:
    """Connection settings for the object store and MLflow."""

    s3_endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    mlflow_uri: str

    @property
    def s3_host(self) -> str:
        return urlparse(self.s3_endpoint).netloc

    @property
    def s3_secure(self) -> bool:
        return urlparse(self.s3_endpoint).scheme == "https"

    def __repr__(self) -> str:  # never print the secret key (logs, tracebacks)
        return (
            f"Settings(s3_endpoint={self.s3_endpoint!r}, bucket={self.bucket!r}, "
            f"mlflow_uri={self.mlflow_uri!r}, access_key=***, secret_key=***)"
        )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read settings from the environment; names every missing variable."""
        env = dict(os.environ if env is None else env)
        missing = [
            k
            for k in (ENV_S3_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_MLFLOW_URI)
            if not env.get(k)
        ]
        if missing:
            raise ConfigError(
                f"missing environment variable(s) {', '.join(missing)}: run `genpipe up` and "
                "`eval $(genpipe env)` for the embedded stack, or set them from your cluster's Secrets"
            )
        endpoint = env[ENV_S3_ENDPOINT]
        if urlparse(endpoint).scheme not in ("http", "https"):
            raise ConfigError(
                f"{ENV_S3_ENDPOINT}={endpoint!r} is not a URL: expected http(s)://host:port"
            )
        return cls(
            s3_endpoint=endpoint.rstrip("/"),
            access_key=env[ENV_ACCESS_KEY],
            secret_key=env[ENV_SECRET_KEY],
            bucket=env.get(ENV_BUCKET) or DEFAULT_BUCKET,
            mlflow_uri=env[ENV_MLFLOW_URI],
        )
