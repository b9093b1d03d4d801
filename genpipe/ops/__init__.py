"""Operations: what runs or talks to infrastructure, over the `zoo` library.

The embedded stack (`stack`, `mlflow_auth`), local serving (`server`), cluster clients
(`kfp_client`, `tfjob`, `kserve`), image builds (`images_build`) and `gc`. Imports only `zoo`.
"""
