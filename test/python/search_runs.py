"""Lists every run of an experiment through the real Python client, as a user would, and prints
them as JSON: [{run_id, status, tags}]; [] when the experiment does not exist.

    python test/python/search_runs.py <experiment name>
Uses MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD) from the environment.
"""
import json
import sys
import warnings

warnings.filterwarnings("ignore")
from mlflow import MlflowClient  # noqa: E402


def main():
    client = MlflowClient()
    experiment = client.get_experiment_by_name(sys.argv[1])
    runs = []
    if experiment is not None:
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    print(json.dumps([{"run_id": r.info.run_id, "status": r.info.status, "tags": r.data.tags} for r in runs]))


if __name__ == "__main__":
    main()
