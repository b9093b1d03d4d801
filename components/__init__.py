"""Pipeline components: each a thin KFP interface over a plain `run()` usable without KFP."""
