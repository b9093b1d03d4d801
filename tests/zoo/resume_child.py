"""Child process for test_train_resume.py: trains the tiny VAE with mid-epoch checkpoints.

Usage: resume_child.py MANIFEST_URI CHECKPOINT_URI WORKDIR OUT_JSON STEP_SLEEP_S
Prints `STEP n` after every optimizer step (after any checkpoint of that step is published).
"""

import json
import sys
import time
from pathlib import Path


def main() -> None:
    manifest_uri, ckpt_uri, workdir, out_json, step_sleep = sys.argv[1:6]
    from zoo.data import fetch
    from zoo.models import resolve_config
    from zoo.storage import ObjectStore
    from zoo.train import Trainer, evaluate_split, load_model

    store = ObjectStore.from_env()
    data = fetch(manifest_uri, store, Path(workdir) / "cache")
    cfg = resolve_config(
        "vae",
        "tiny",
        {
            "epochs": 3,
            "steps_per_epoch": 20,
            "checkpoint_every_steps": 4,
            "checkpoint_every_seconds": 0,
        },
    )

    def on_step(step: int) -> None:
        print(f"STEP {step}", flush=True)
        time.sleep(float(step_sleep))  # stretch the run so the parent can kill it mid-epoch

    # A fresh work dir per attempt, like a retried pod: only the object store carries state.
    work = Path(workdir) / f"work-{time.time_ns()}"
    res = Trainer(
        "vae", cfg, data, work, checkpoint_uri=ckpt_uri, store=store, on_step=on_step
    ).run()
    model, _ = load_model(res.model_dir)
    metrics = evaluate_split(model, data, "test")
    Path(out_json).write_text(
        json.dumps(
            {
                "resumed_from": res.resumed_from_step,
                "steps": res.steps,
                "neg_elbo": metrics["neg_elbo"],
            }
        )
    )


if __name__ == "__main__":
    main()
