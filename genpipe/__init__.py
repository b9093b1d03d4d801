"""genpipe's application layers above the library (`zoo`).

Layers, bottom to top (each imports only layers below it; `make layers` checks this):

1. `zoo`          the library: models, data, configs, trainer, evaluation, blessing, registry.
2. `genpipe.ops`  operations: the embedded stack, local HTTP serving, cluster clients (KFP,
                  TFJob, KServe), image builds, garbage collection.
3. `components`   the four pipeline steps (+ the exit handler): thin KFP interface + `run()`.
4. `pipelines`    the one pipeline factory, cluster profiles, and the local runners
                  (in-process, warm task server, containers).
5. `genpipe.cli`  the `genpipe` command, one module per noun.
"""
