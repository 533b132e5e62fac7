"""Make the models of `make bench-models` the way users make them, and register them in MLflow.

Three scikit-learn MLPClassifiers on iris with two hidden layers, sized so that their ONNX files
are about 15, 70 and 150 MB (as big as MobileNet, YOLOv5s and half a ResNet-50), trained for a
few iterations (the bench measures fetching and opening them, not their accuracy), exported by
skl2onnx and logged with mlflow.onnx.log_model into registered models `kmj-bench-mlp-<MB>`.

Reads MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. Writes a JSON
list of {name, version, mb, onnx_bytes} to stdout. Idempotent: a registered model whose latest
version carries the tag kmj.bench.hidden of the size wanted is used as it is.

    python bench/make_bench_models.py [--sizes 15,70,150]
"""

import argparse
import json
import os
import sys
import tempfile
import warnings

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from skl2onnx import to_onnx

import mlflow
import mlflow.onnx
from mlflow import MlflowClient
from mlflow.models import infer_signature

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def hidden_for(mb):
    """Two equal hidden layers whose float32 weights take about `mb` megabytes."""
    # 4*h + h*h + 3*h weights and 2*h + 3 biases, 4 bytes each: h*h dominates.
    return int(((mb * 1_000_000 / 4) ** 0.5))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="15,70,150")
    args = p.parse_args()
    client = MlflowClient()
    iris = load_iris(as_frame=True)
    x = iris.data.copy()
    x.columns = FEATURES
    y = iris.target
    xf = x.to_numpy().astype(np.float32)
    mlflow.set_experiment("kmj-bench-models")
    out = []
    for mb in [int(s) for s in args.sizes.split(",")]:
        name = f"kmj-bench-mlp-{mb}"
        h = hidden_for(mb)
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except Exception:  # noqa: BLE001 - no such model yet
            versions = []
        found = [v for v in versions if v.tags.get("kmj.bench.hidden") == str(h)]
        if found:
            v = max(found, key=lambda v: int(v.version))
            out.append({"name": name, "version": int(v.version), "mb": mb, "onnx_bytes": int(v.tags.get("kmj.bench.onnx_bytes", "0"))})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier(hidden_layer_sizes=(h, h), max_iter=2, random_state=0).fit(xf, y)
        onx = to_onnx(model, xf[:1], options={id(model): {"zipmap": False}})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            with open(path, "wb") as f:
                f.write(onx.SerializeToString())
            onnx_bytes = os.path.getsize(path)
        with mlflow.start_run(run_name=f"train-{name}"):
            info = mlflow.onnx.log_model(onx, name="model", signature=infer_signature(x, y), registered_model_name=name)
        version = info.registered_model_version
        client.set_model_version_tag(name, version, "kmj.bench.hidden", str(h))
        client.set_model_version_tag(name, version, "kmj.bench.onnx_bytes", str(onnx_bytes))
        out.append({"name": name, "version": int(version), "mb": mb, "onnx_bytes": onnx_bytes})
        print(f"registered {name} version {version}: hidden {h}x{h}, {onnx_bytes} bytes of ONNX", file=sys.stderr)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
