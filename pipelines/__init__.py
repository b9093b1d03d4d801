"""Kubeflow Pipelines for genpipe: pipeline definitions and the platform profiles they run on."""
