#!/usr/bin/env python3
"""Checks an exported ONNX model with the onnx package's full checker, then answers raw CSV rows
with onnxruntime, independently of the grid: one JSON object per row on stdout,
{"probabilities": [...], "label": "..."} for a classifier, {"prediction": v} for a regression.

usage: ops/onnx-predict.py MODEL.onnx ROWS.csv

Each model input is a column of the CSV by name: float inputs parse the cell (a cell that is not
a number — NA, empty — is NaN, a missing value), string inputs take the cell trimmed.
"""
import csv
import json
import sys

import numpy as np
import onnx
import onnxruntime


def main(model_path, rows_path):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    with open(rows_path, newline="") as f:
        rows = list(csv.DictReader(f))
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feeds = {}
    for node_input in session.get_inputs():
        cells = [row[node_input.name].strip() for row in rows]
        if node_input.type == "tensor(string)":
            feeds[node_input.name] = np.array(cells, dtype=object).reshape(-1, 1)
        else:
            def number(cell):
                try:
                    return float(cell)
                except ValueError:
                    return float("nan")
            feeds[node_input.name] = np.array([number(c) for c in cells], dtype=np.float32).reshape(-1, 1)
    names = [o.name for o in session.get_outputs()]
    answers = dict(zip(names, session.run(names, feeds)))
    for i in range(len(rows)):
        if "prediction" in answers:
            line = {"prediction": float(answers["prediction"][i][0])}
        else:
            line = {
                "probabilities": [float(p) for p in answers["probabilities"][i]],
                "label": str(answers["label"][i]),
            }
        print(json.dumps(line))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
