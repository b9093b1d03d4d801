"""Help texts more than one command's options share (one definition, so they agree)."""

from __future__ import annotations

PROFILE_HELP = "Cluster profile: cpu | gke | eks | aks | generic-nvidia, or a profile YAML path."
