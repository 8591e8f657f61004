"""ONNX export with one uniform ranker interface:

    input  `features` float32 [N, 14]   (N dynamic)
    output `score`    float32 [N]       (probability of a click, in [0, 1])

Graphs are (re)built with onnx.helper using fixed names and no timestamps, so the
same weights always serialise to the same bytes. Opset 13 / IR 7 / ai.onnx.ml 1 is
old enough for any current onnxruntime (the services use onnxruntime-node).
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
ML_OPSET = 1
IR_VERSION = 7
PRODUCER = "recsys-mesh-training"


def _io(n_features: int):
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    return inp, out


def _model(graph, *, ml: bool, doc: str, meta: dict) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    m = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER, producer_version="1", doc_string=doc)
    m.ir_version = IR_VERSION
    m.model_version = 1
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.checker.check_model(m, full_check=True)
    return m


def lightgbm_to_onnx(clf, n_features: int, meta: dict) -> onnx.ModelProto:
    """onnxmltools converts the booster to a TreeEnsembleClassifier whose outputs are
    (label, probabilities[N,2]); keep only that node and take column 1 -> score[N]."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    raw = convert_lightgbm(clf, initial_types=[("features", FloatTensorType([None, n_features]))], zipmap=False, target_opset=OPSET)
    trees = [n for n in raw.graph.node if n.op_type == "TreeEnsembleClassifier"]
    if len(trees) != 1:
        raise RuntimeError(f"expected one TreeEnsembleClassifier, got {[n.op_type for n in raw.graph.node]}")
    src = trees[0]
    tree = helper.make_node("TreeEnsembleClassifier", ["features"], ["label", "probabilities"], name="trees", domain="ai.onnx.ml")
    tree.attribute.extend(src.attribute)
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "positive_class")
    gather = helper.make_node("Gather", ["probabilities", "positive_class"], ["score"], name="take_positive", axis=1)
    inp, out = _io(n_features)
    g = helper.make_graph([tree, gather], "ranker_gbdt", [inp], [out], initializer=[one])
    return _model(g, ml=True, doc="LightGBM binary ranker; score = P(click)", meta=meta)


def mlp_to_onnx(mean, std, coefs, intercepts, meta: dict) -> onnx.ModelProto:
    """sklearn MLPClassifier (relu hidden layers, logistic output) with the input
    standardisation as the first two nodes of the graph."""
    n_features = coefs[0].shape[0]
    inits = [
        numpy_helper.from_array(np.asarray(mean, dtype=np.float32), "x_mean"),
        numpy_helper.from_array((1.0 / np.asarray(std)).astype(np.float32), "x_inv_std"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "x_mean"], ["x_centered"], name="standardize_sub"),
        helper.make_node("Mul", ["x_centered", "x_inv_std"], ["x0"], name="standardize_scale"),
    ]
    x = "x0"
    for li, (W, b) in enumerate(zip(coefs, intercepts)):
        inits.append(numpy_helper.from_array(np.asarray(W, dtype=np.float32), f"W{li}"))
        inits.append(numpy_helper.from_array(np.asarray(b, dtype=np.float32), f"b{li}"))
        nodes.append(helper.make_node("MatMul", [x, f"W{li}"], [f"mm{li}"], name=f"dense{li}_matmul"))
        nodes.append(helper.make_node("Add", [f"mm{li}", f"b{li}"], [f"z{li}"], name=f"dense{li}_bias"))
        if li < len(coefs) - 1:
            nodes.append(helper.make_node("Relu", [f"z{li}"], [f"h{li}"], name=f"relu{li}"))
            x = f"h{li}"
        else:
            nodes.append(helper.make_node("Sigmoid", [f"z{li}"], ["prob"], name="sigmoid"))
    nodes.append(helper.make_node("Reshape", ["prob", "flat_shape"], ["score"], name="flatten_score"))
    inp, out = _io(n_features)
    g = helper.make_graph(nodes, "ranker_mlp", [inp], [out], initializer=inits)
    return _model(g, ml=False, doc="MLP ranker (standardise -> dense/relu -> sigmoid); score = P(click)", meta=meta)


def linear_to_onnx(weights, bias: float, meta: dict, doc: str) -> onnx.ModelProto:
    """A tiny logistic model (used for the deliberately mismatched parity fixture)."""
    n = len(weights)
    inits = [
        numpy_helper.from_array(np.asarray(weights, dtype=np.float32).reshape(n, 1), "w"),
        numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["prob"]),
        helper.make_node("Reshape", ["prob", "flat_shape"], ["score"]),
    ]
    inp, out = _io(n)
    g = helper.make_graph(nodes, "tiny_linear", [inp], [out], initializer=inits)
    return _model(g, ml=False, doc=doc, meta=meta)


def quantize_int8(fp32_path: str, int8_path: str) -> None:
    """INT8 dynamic quantisation (weights int8, activations quantised at run time)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # silence the "consider pre-processing" hint
    try:
        quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=False, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    # normalise the few fields the quantiser may stamp, so bytes stay reproducible
    m = onnx.load(int8_path)
    m.producer_name, m.producer_version = PRODUCER, "1"
    onnx.checker.check_model(m, full_check=True)
    save(m, int8_path)


def save(m: onnx.ModelProto, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(m.SerializeToString(deterministic=True))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def check_interface(path: str, n_features: int) -> None:
    """onnx.checker + onnxruntime: exactly one input features[N,n] float32 and one
    output score[N] float32 in [0, 1], for batch sizes 1 and 7."""
    onnx.checker.check_model(onnx.load(path), full_check=True)
    s = session(path)
    ins, outs = s.get_inputs(), s.get_outputs()
    assert [(x.name, x.type) for x in ins] == [("features", "tensor(float)")], ins
    assert ins[0].shape[1] == n_features and not isinstance(ins[0].shape[0], int), ins[0].shape
    assert [(x.name, x.type) for x in outs] == [("score", "tensor(float)")], outs
    assert len(outs[0].shape) == 1, outs[0].shape
    rng = np.random.default_rng(0)
    for n in (1, 7):
        y = s.run(["score"], {"features": rng.normal(size=(n, n_features)).astype(np.float32)})[0]
        assert y.shape == (n,) and y.dtype == np.float32, (y.shape, y.dtype)
        assert np.all((y >= 0) & (y <= 1)), y


def predict(path: str, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    s = session(path)
    out = [s.run(["score"], {"features": X[k:k + batch]})[0] for k in range(0, len(X), batch)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
