"""Make the models and datasets the tests, the demo and the benchmarks use, the way users make them.

Trains scikit-learn models on iris, converts them to ONNX with skl2onnx, and logs and registers them
with the real MLflow client (mlflow.onnx.log_model). Writes the datasets (CSV, JSON Lines, and a
copy logged as an MLflow artifact) and, for every model, what Python's onnxruntime predicts for the
iris rows, so tests can compare the worker's predictions with it.

Reads MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. Writes
<out>/fixtures.json describing everything made. Idempotent: when fixtures.json names models that
the server still has, it does nothing.

    python scripts/make_test_models.py --out .run/fixtures [--big-rows 100000]
"""

import argparse
import csv
import hashlib
import json
import os
import sys

import numpy as np
# onnxruntime uploads telemetry unless this is set before it loads; nothing here sends any.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from onnx import numpy_helper
from skl2onnx import to_onnx

import mlflow
import mlflow.onnx
from mlflow import MlflowClient
from mlflow.models import infer_signature

CLASSIFIER = "kmj-iris-classifier"
REGRESSOR = "kmj-iris-regressor"
MLP = "kmj-iris-mlp"
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
REG_FEATURES = FEATURES[:3]
REG_LABEL = "petal width (cm)"
LABEL = "species"


def still_there(client, fixtures):
    try:
        for m in fixtures["models"].values():
            client.get_model_version(m["name"], str(m["version"]))
        return True
    except Exception:  # noqa: BLE001 - any failure means: make them again
        return False


def write_datasets(out, frame):
    csv_path = os.path.join(out, "iris.csv")
    frame.to_csv(csv_path, index=False)
    jsonl_path = os.path.join(out, "iris.jsonl")
    with open(jsonl_path, "w") as f:
        for row in frame.to_dict(orient="records"):
            f.write(json.dumps(row) + "\n")
    return csv_path, jsonl_path


def write_big(out, frame, rows):
    """A large dataset: iris rows repeated with small noise, for throughput benchmarks."""
    rng = np.random.default_rng(7)
    base = frame[FEATURES].to_numpy()
    idx = rng.integers(0, len(base), rows)
    data = base[idx] + rng.normal(0, 0.05, (rows, len(FEATURES)))
    labels = frame[LABEL].to_numpy()[idx]
    path = os.path.join(out, f"iris-{rows}.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FEATURES + [LABEL])
        for r, y in zip(data, labels):
            w.writerow([f"{v:.4f}" for v in r] + [int(y)])
    return path


def raw_initializers(onx):
    """Stores initializers as raw bytes, as exporters of big models (torch, tf2onnx) do. onnx only
    moves raw tensors to external data files; skl2onnx writes float lists, which stay inline."""
    for init in onx.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
    return onx


def log_and_register(name, model, x_frame, y, tags, raw=False):
    onx = to_onnx(model, x_frame.to_numpy().astype(np.float32)[:1])
    if raw:
        onx = raw_initializers(onx)
    signature = infer_signature(x_frame, y)
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.set_tags(tags)
        info = mlflow.onnx.log_model(onx, name="model", signature=signature, registered_model_name=name)
    version = int(info.registered_model_version)
    return run.info.run_id, version


def expected(model_path, x):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs() if o.type.startswith("tensor")]
    res = sess.run(outs, {inp: x.astype(np.float32)})
    return {name: np.asarray(v).tolist() for name, v in zip(outs, res)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--big-rows", type=int, default=0)
    ap.add_argument("--minimal", action="store_true", help="only the classifier (v1, alias champion) and the dataset artifact")
    args = ap.parse_args()
    # Absolute, so every path in fixtures.json can be used from any directory as it is.
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "fixtures.json")
    client = MlflowClient()
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            fixtures = json.load(f)
        if still_there(client, fixtures):
            big = fixtures.setdefault("bigDataset", {})
            if args.big_rows > 0 and not os.path.exists(big.get(str(args.big_rows), "")):
                frame = load_iris(as_frame=True).frame.rename(columns={"target": LABEL})
                big[str(args.big_rows)] = write_big(args.out, frame, args.big_rows)
                with open(manifest_path, "w") as f:
                    json.dump(fixtures, f, indent=2)
                print(f"fixtures written: {big[str(args.big_rows)]}")
            else:
                print(f"fixtures already made: {manifest_path}")
            return 0

    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns={"target": LABEL})
    x = frame[FEATURES]
    y = frame[LABEL]
    csv_path, jsonl_path = write_datasets(args.out, frame)

    mlflow.set_experiment("kmj-test-models")
    models = {}
    run_id, v1 = log_and_register(CLASSIFIER, LogisticRegression(max_iter=500, C=1.0).fit(x, y), x, y, {"kmj.fixture": "classifier-v1"})
    client.set_registered_model_alias(CLASSIFIER, "champion", str(v1))
    models["classifier"] = {"name": CLASSIFIER, "version": v1, "runId": run_id, "alias": "champion"}
    xr = frame[REG_FEATURES]
    if not args.minimal:
        run_id2, v2 = log_and_register(CLASSIFIER, LogisticRegression(max_iter=500, C=0.05).fit(x, y), x, y, {"kmj.fixture": "classifier-v2"})
        models["classifierV2"] = {"name": CLASSIFIER, "version": v2, "runId": run_id2}

        yr = frame[REG_LABEL]
        run_r, vr = log_and_register(REGRESSOR, LinearRegression().fit(xr, yr), xr, yr, {"kmj.fixture": "regressor"})
        models["regressor"] = {"name": REGRESSOR, "version": vr, "runId": run_r}

        # Large enough weights that onnx stores them as external data beside model.onnx.
        mlp = MLPClassifier(hidden_layer_sizes=(256,), max_iter=300, random_state=1).fit(x, y)
        run_m, vm = log_and_register(MLP, mlp, x, y, {"kmj.fixture": "mlp"}, raw=True)
        models["mlp"] = {"name": MLP, "version": vm, "runId": run_m}

    # Expected predictions, from the very files the registry serves.
    for key, m in models.items():
        local = mlflow.artifacts.download_artifacts(f"models:/{m['name']}/{m['version']}", dst_path=os.path.join(args.out, "models", key))
        files = sorted(os.listdir(local))
        m["files"] = files
        feats = (xr if key == "regressor" else x).to_numpy()
        m["expected"] = expected(os.path.join(local, "model.onnx"), feats)

    # The dataset as an MLflow artifact too, for runs:/ and mlflow-artifacts:/ dataset URIs.
    with mlflow.start_run(run_name="iris-dataset") as run:
        mlflow.log_artifact(csv_path, artifact_path="data")
        mlflow.log_artifact(jsonl_path, artifact_path="data")
        dataset_run = run.info.run_id
        dataset_artifact_uri = run.info.artifact_uri

    with open(csv_path, "rb") as f:
        csv_sha = hashlib.sha256(f.read()).hexdigest()
    fixtures = {
        "trackingUri": mlflow.get_tracking_uri(),
        "features": FEATURES,
        "label": LABEL,
        "regressorFeatures": REG_FEATURES,
        "regressorLabel": REG_LABEL,
        "models": models,
        "datasets": {
            "csv": csv_path,
            "jsonl": jsonl_path,
            "csvSha256": csv_sha,
            "rows": len(frame),
            "runId": dataset_run,
            "runsCsvUri": f"runs:/{dataset_run}/data/iris.csv",
            "artifactCsvUri": f"{dataset_artifact_uri}/data/iris.csv",
            "artifactJsonlUri": f"{dataset_artifact_uri}/data/iris.jsonl",
        },
        "bigDataset": {},
    }
    if args.big_rows > 0:
        fixtures["bigDataset"][str(args.big_rows)] = write_big(args.out, frame, args.big_rows)
    with open(manifest_path, "w") as f:
        json.dump(fixtures, f, indent=2)
    print(f"fixtures written: {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
