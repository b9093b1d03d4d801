"""The CRD checker rejects what the API server would: it is only useful if it can say no."""

from __future__ import annotations

import copy

import pytest
import upstream_contracts as uc

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "vae", "namespace": "kubeflow", "labels": {"app": "genpipe"}},
    "spec": {
        "predictor": {
            "model": {
                "modelFormat": {"name": "mlflow"},
                "storageUri": "s3://genpipe/models/1/artifacts",
                "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
            }
        }
    },
}


def test_a_valid_inference_service_passes():
    assert uc.crd_errors(ISVC) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o["spec"]["predictor"]["model"].update(bogus=1), "model.bogus: unknown field"),
        (lambda o: o["spec"]["predictor"].update(minReplicas="1"), "expected integer"),
        (lambda o: o["metadata"].update(uid="x"), "metadata.uid: unknown or server-set"),
        (lambda o: o["metadata"].update(name="Bad_Name"), "not a DNS-1123 subdomain"),
        (lambda o: o.update(apiVersion="serving.kserve.io/v1alpha9"), "not served"),
        (
            lambda o: o["spec"]["predictor"].update(containers=[{"image": "x"}]),
            "containers[0].name: required",
        ),
        (
            lambda o: o["spec"]["predictor"]["model"]["resources"]["limits"].update(cpu="1 core"),
            "does not match",
        ),
        (
            lambda o: o["spec"]["predictor"].update(
                tolerations=[{"key": "a", "operator": "Exists"}],
                containers=[{"name": "c", "env": [{"name": "A"}, {"name": "A"}]}],
            ),
            "duplicate entries",
        ),
    ],
)
def test_violations_are_named(mutate, expected):
    obj = copy.deepcopy(ISVC)
    mutate(obj)
    errors = uc.crd_errors(obj)
    assert any(expected in e for e in errors), errors


def test_every_spec_file_has_its_crd():
    kinds = {kind for _, kind in uc._crds()}
    assert kinds >= {"InferenceService", "ServingRuntime", "TFJob"}
