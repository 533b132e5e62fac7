"""Reads an MLflow run back through the real Python client, as a user would, and prints it as JSON:
info, params, metrics, tags, dataset inputs, the logged models it used (with the metrics this run
logged about each, as the model's page shows them), and the text of every artifact under the run.

    python test/python/read_run.py <run_id>
Uses MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD) from the environment.
"""
import json
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402


def model_input(client, model_id, run_id):
    lm = client.get_logged_model(model_id)
    return {
        "model_id": lm.model_id,
        "name": lm.name,
        "source_run_id": lm.source_run_id,
        "run_metrics": sorted({m.key for m in (lm.metrics or []) if m.run_id == run_id}),
    }


def main():
    run_id = sys.argv[1]
    run = mlflow.get_run(run_id)
    client = MlflowClient()
    artifacts = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=tmp)
        for root, _, files in os.walk(local):
            for f in files:
                path = os.path.join(root, f)
                with open(path, encoding="utf-8", errors="replace") as fh:
                    artifacts[os.path.relpath(path, local)] = fh.read()
    out = {
        "info": {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "run_name": run.info.run_name,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "artifact_uri": run.info.artifact_uri,
        },
        "params": run.data.params,
        "metrics": run.data.metrics,
        "tags": run.data.tags,
        "inputs": [
            {
                "name": di.dataset.name,
                "digest": di.dataset.digest,
                "source_type": di.dataset.source_type,
                "source": di.dataset.source,
                "schema": di.dataset.schema,
                "profile": di.dataset.profile,
                "tags": {t.key: t.value for t in di.tags},
            }
            for di in run.inputs.dataset_inputs
        ],
        "model_inputs": [model_input(client, mi.model_id, run_id) for mi in run.inputs.model_inputs or []],
        "metric_history": {k: [m.value for m in client.get_metric_history(run_id, k)] for k in run.data.metrics},
        "artifacts": artifacts,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
