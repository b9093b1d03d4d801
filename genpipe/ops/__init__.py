"""Operations: what runs or talks to infrastructure, over the `zoo` library.

The embedded stack (`stack/`: lifecycle, state dir, server processes, SeaweedFS, MLflow;
`mlflow_auth`, loaded by the MLflow server), process liveness (`procs`), local serving
(`server`), cluster clients (`kfp_client` with `kfp_auth` and `kfp_schedule`, `tfjob`,
`kserve`), image builds (`images_build`) and `gc`. Imports only `zoo`.
"""
