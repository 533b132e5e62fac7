"""The baseline for `make bench-worker`: the same job as `kmj worker`, written the usual Python way.

pika takes one message (prefetch 1), the mlflow client finds or creates the experiment and the run,
downloads the model with mlflow.artifacts.download_artifacts, onnxruntime runs it on the dataset
read with pandas, the predictions go back as an artifact, then the message is acknowledged.
It logs the same rows and processing_seconds metrics as the TypeScript worker, measured over the
same span (reading the dataset, inference, writing predictions).

    python bench/python_worker.py --queue <name>
Environment: RABBITMQ_URL, MLFLOW_TRACKING_URI.
"""

import argparse
import json
import os
import tempfile
import time

import mlflow
import numpy as np
# onnxruntime uploads telemetry unless this is set before it loads; nothing here sends any.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort
import pandas as pd
import pika
import yaml
from mlflow import MlflowClient


def handle(body):
    received = time.time()
    req = json.loads(body)
    client = MlflowClient()
    exp = client.get_experiment_by_name(req["experiment"])
    exp_id = exp.experiment_id if exp else client.create_experiment(req["experiment"])
    found = client.search_runs([exp_id], filter_string=f"tags.`kmj.request_id` = '{req['requestId']}'")
    if any(r.info.status == "FINISHED" for r in found):
        return
    run = client.create_run(exp_id, run_name=req["requestId"], tags={"kmj.request_id": req["requestId"]})
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = mlflow.artifacts.download_artifacts(req["model"], dst_path=os.path.join(tmp, "model"))
        with open(os.path.join(model_dir, "MLmodel")) as f:
            mlmodel = yaml.safe_load(f)
        sess = ort.InferenceSession(os.path.join(model_dir, mlmodel["flavors"]["onnx"]["data"]), providers=["CPUExecutionProvider"])
        load_seconds = time.perf_counter() - t0
        signature = json.loads(mlmodel["signature"]["inputs"])
        features = [c["name"] for c in signature]
        outputs = [o.name for o in sess.get_outputs() if o.type.startswith("tensor")]

        p0 = time.perf_counter()
        frame = pd.read_csv(req["dataset"]["uri"])
        x = frame[features].to_numpy(dtype=np.float32)
        results = sess.run(outputs, {sess.get_inputs()[0].name: x})
        out = pd.DataFrame({"row": np.arange(1, len(frame) + 1)})
        for name, values in zip(outputs, results):
            values = np.asarray(values)
            if values.ndim == 1 or values.shape[1] == 1:
                out[name] = values.reshape(len(frame))
            else:
                for i in range(values.shape[1]):
                    out[f"{name}_{i}"] = values[:, i]
        label = req.get("labelColumn")
        if label:
            out[label] = frame[label]
        path = os.path.join(tmp, "predictions.csv")
        out.to_csv(path, index=False)
        processing = time.perf_counter() - p0

        rows = len(frame)
        client.log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric("rows", rows, int(time.time() * 1000), 0),
                mlflow.entities.Metric("model_load_seconds", load_seconds, int(time.time() * 1000), 0),
                mlflow.entities.Metric("processing_seconds", processing, int(time.time() * 1000), 0),
                mlflow.entities.Metric("rows_per_second", rows / processing, int(time.time() * 1000), 0),
                mlflow.entities.Metric("total_seconds", time.time() - received, int(time.time() * 1000), 0),
            ],
            params=[mlflow.entities.Param("model_uri", req["model"])],
        )
        client.log_artifact(run_id, path, artifact_path="predictions")
    client.set_terminated(run_id, "FINISHED")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", required=True)
    args = ap.parse_args()
    conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    for method, _props, body in ch.consume(args.queue, inactivity_timeout=30):
        if method is None:
            break
        handle(body)
        ch.basic_cancel(method.consumer_tag)
        ch.basic_ack(method.delivery_tag)
        break
    ch.close()
    conn.close()


if __name__ == "__main__":
    main()
