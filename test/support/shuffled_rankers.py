"""Writes a models directory whose rankers score at random: each ranker-*/<latest>
of the source becomes ranker-*/v2 with its score passed through sin(7919 * score),
mapped to [0, 1]: deterministic, the same ONNX interface, and a ranking unrelated to
the real one. Embeddings and catalogue are linked from the source.

usage: shuffled_rankers.py <source models dir> <out dir>
"""
import hashlib
import json
import os
import sys

import onnx
from onnx import TensorProto, helper


def scramble(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["score_real" if o == "score" else o for o in node.output]
    consts = [
        helper.make_tensor("scramble_k", TensorProto.FLOAT, [], [7919.0]),
        helper.make_tensor("scramble_half", TensorProto.FLOAT, [], [0.5]),
    ]
    graph.initializer.extend(consts)
    graph.node.extend([
        helper.make_node("Mul", ["score_real", "scramble_k"], ["scramble_x"]),
        helper.make_node("Sin", ["scramble_x"], ["scramble_sin"]),
        helper.make_node("Mul", ["scramble_sin", "scramble_half"], ["scramble_half_sin"]),
        helper.make_node("Add", ["scramble_half_sin", "scramble_half"], ["score"]),
    ])
    onnx.checker.check_model(model)
    return model


def main(source: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if not name.startswith("ranker-"):
            os.symlink(os.path.abspath(path), os.path.join(out, name))
            continue
        latest = sorted(v for v in os.listdir(path) if os.path.exists(os.path.join(path, v, "manifest.json")))[-1]
        with open(os.path.join(path, latest, "manifest.json")) as f:
            manifest = json.load(f)
        data = scramble(onnx.load(os.path.join(path, latest, "model.onnx"))).SerializeToString()
        target = os.path.join(out, name, "v2")
        os.makedirs(target)
        with open(os.path.join(target, "model.onnx"), "wb") as f:
            f.write(data)
        manifest.update(version="v2", sha256=hashlib.sha256(data).hexdigest(), note="scores scrambled for canary tests")
        with open(os.path.join(target, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
