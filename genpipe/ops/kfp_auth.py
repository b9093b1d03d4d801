"""Who genpipe is to a Kubeflow Pipelines API server, and where that server is.

Auth, in order: a bearer token (`--token` / GENPIPE_KFP_TOKEN), a session cookie (`--cookie` /
GENPIPE_KFP_COOKIE, e.g. `authservice_session=...` behind Kubeflow's oauth2-proxy/Dex), else the
in-cluster projected ServiceAccount token at KF_PIPELINES_SA_TOKEN_PATH (default
/var/run/secrets/kubeflow/pipelines/token, audience pipelines.kubeflow.org) when that file
exists, else no auth (a port-forwarded standalone KFP). `genpipe.ops.kfp_client.Kfp` uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ConfigError

ENV_HOST = "GENPIPE_KFP_HOST"
ENV_TOKEN = "GENPIPE_KFP_TOKEN"
ENV_COOKIE = "GENPIPE_KFP_COOKIE"
ENV_SA_TOKEN_PATH = "KF_PIPELINES_SA_TOKEN_PATH"  # the name kfp itself reads
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


@dataclass(frozen=True)
class KfpAuth:
    """How to authenticate to KFP: at most one of token, cookie, token_path."""

    token: str = ""
    cookie: str = ""
    token_path: str = ""

    @property
    def kind(self) -> str:
        if self.token:
            return "bearer token"
        if self.cookie:
            return "cookie"
        if self.token_path:
            return f"service-account token {self.token_path}"
        return "none"

    def __repr__(self) -> str:  # never print a credential
        return f"KfpAuth({self.kind})"


def resolve_auth(token: str = "", cookie: str = "", env: dict[str, str] | None = None) -> KfpAuth:
    """Flags first, then environment, then the in-cluster SA token file if it exists."""
    env = dict(os.environ if env is None else env)
    token = token or env.get(ENV_TOKEN, "")
    cookie = cookie or env.get(ENV_COOKIE, "")
    if token and cookie:
        raise ConfigError("give a KFP bearer token or a cookie, not both")
    if token or cookie:
        return KfpAuth(token=token.strip(), cookie=cookie.strip())
    path = env.get(ENV_SA_TOKEN_PATH, DEFAULT_SA_TOKEN_PATH)
    return KfpAuth(token_path=path) if Path(path).is_file() else KfpAuth()


def resolve_host(host: str = "", env: dict[str, str] | None = None) -> str:
    env = dict(os.environ if env is None else env)
    host = host or env.get(ENV_HOST, "") or env.get("KF_PIPELINES_ENDPOINT", "")
    if not host:
        raise ConfigError(
            f"no KFP host: pass --host URL or set {ENV_HOST} (in-cluster: "
            "http://ml-pipeline.kubeflow.svc.cluster.local:8888; from a laptop: "
            "`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80` and http://localhost:8080)"
        )
    if not host.startswith(("http://", "https://")):
        raise ConfigError(f"--host {host!r} is not a URL: expected http(s)://host[:port]")
    return host.rstrip("/")
