"""Pipeline components: each a thin KFP interface over a plain `run()` usable without KFP.

The channel between the steps is the MLflow run, one per pipeline run:

* ingest checks the run once (zoo.request.RunRequest: a bad model, preset, override,
  threshold, registered name or test fraction fails here, before any I/O, naming the
  pipeline parameter), creates the MLflow run and records on it the dataset (fingerprint,
  params, input), config hash and code version, and the checked request
  (`common.record_run`: resolved config, thresholds, registered name);
* train, evaluate and register read that record (`common.recorded_run`) instead of parsing
  the run's parameters again, and write their results to the same run (model, metrics,
  blessing, model version); `genpipe run` reads the outcome from it.

KFP task outputs carry only what the pipeline's DAG itself uses: ingest's `mlflow_run_id`,
`unchanged_since` (the "changed" condition) and dataset artifact, train's model artifact,
evaluate's `blessed` (the "blessed" condition) and the champion it compared with (for
register's promotion). Their names, and every MLflow tag and param key, are in zoo.names.
"""
