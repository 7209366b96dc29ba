"""The SavedModel's two TF Serving signatures, its warmup requests, and how to call the bytes signature.

    serving_default   image: float32 [N, H, W, C] raw pixels 0-255        -> fine, coarse (probabilities)
    serving_bytes     image_bytes: string [N] encoded JPEG / PNG / BMP / GIF -> fine, coarse (probabilities),
                      fine_classes, fine_scores, coarse_classes, coarse_scores (top k per head: the answered
                      class first, then the most probable others) and, with both heads, label and level (the
                      hedged answer: the fine class, or its superclass when the fine probability is under the
                      export's threshold)
    decoding          no input -> fine_to_coarse, hedge_threshold (-1: none), consistent (1: marginal / both)

The answered (fine, coarse) pair is serving/answers.py's, computed in the graph: the consistent pair for
--coarse_head=marginal | both, each head's argmax for learned; the same as predict prints and evaluation scores.

serving_bytes decodes and resizes in the graph with `data.images.decode_bytes`, the function the folder dataset
decodes its files with, so a served image gets exactly the pixels `--dataset=folder` trained and tested on. A
string that is not an image stops the request with InvalidArgument naming its index in the batch; the server
process goes on serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from mtl_keras.config import DataConfig
from mtl_keras.data.graph_headers import GIF_MAGIC, damage, header_pixels
from mtl_keras.data.images import decode_bytes, fit_images
from mtl_keras.errors import ExportError

DEFAULT = "serving_default"
BYTES = "serving_bytes"
DECODING = "decoding"
IMAGE_INPUT = "image"
BYTES_INPUT = "image_bytes"
WARMUP_BATCHES = (1, 8)  # warmup records per signature: these batch sizes of the warmup images


def input_spec(model) -> tf.TensorSpec:
    """The float input: float32 raw pixels (0-255), any batch size, named `image`."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=IMAGE_INPUT)


def bytes_spec() -> tf.TensorSpec:
    """The bytes input: a batch of encoded images, named `image_bytes`."""
    return tf.TensorSpec((None,), tf.string, name=BYTES_INPUT)


def _starts(strings: tf.Tensor, magic: bytes) -> tf.Tensor:
    """Whether each string begins with `magic`."""
    return tf.equal(tf.strings.substr(strings, 0, len(magic)), magic)


def _check_formats(image_bytes: tf.Tensor) -> tf.Operation:
    """An InvalidArgument naming the first string of the batch that no decoder of decode_bytes reads."""
    def starts(magic: bytes) -> tf.Tensor:
        return _starts(image_bytes, magic)

    # The magic numbers decode_bytes's decoders accept (tf.io.is_jpeg tests the same three JPEG bytes).
    known = starts(b"\xff\xd8\xff") | starts(b"\x89PNG\r\n\x1a\n") | starts(GIF_MAGIC) | starts(b"BM")
    first_bad = tf.reduce_min(tf.concat([tf.cast(tf.where(~known)[:, 0], tf.int32), [-1]], 0)[:1])
    return tf.debugging.Assert(tf.reduce_all(known), [
        tf.strings.format("serving_bytes: image_bytes[{}] is not a JPEG, PNG, BMP or GIF image", first_bad)])


def _not_empty(batch: tf.Tensor, signature: str, name: str) -> tf.Operation:
    """An InvalidArgument for a batch of no image: the trunks cannot run on a batch of 0 (Keras refuses it at the
    stem), and returning empty outputs would need a conditional in the graph that model.onnx converts."""
    return tf.debugging.Assert(tf.shape(batch)[0] > 0, [
        f"{signature}: the request holds no image ({name} is a batch of 0); send at least one"])


def serve_pixels(model):
    """serving_default: the model's call on `image`, after an InvalidArgument for an empty batch and for NaN or
    infinite pixels (the model would answer NaN probabilities). Both checks are Assert / CheckNumerics, which
    tf2onnx drops: model.onnx is the same graph, and returns NaN rows for such images instead."""
    def serve(image):
        with tf.control_dependencies([_not_empty(image, DEFAULT, IMAGE_INPUT)]):
            image = tf.debugging.check_numerics(
                image, f"{DEFAULT}: {IMAGE_INPUT} holds NaN or infinite pixels (raw pixels are 0-255)")
        return model(image)

    return serve


def decode_batch(image_bytes: tf.Tensor, shape: tuple[int, int, int],
                 max_pixels: int = DataConfig.max_image_pixels) -> tf.Tensor:
    """Encoded images [N] -> float32 [N, H, W, C], pixel for pixel as the folder dataset decodes its files
    (`decode_bytes` at H, then `fit_images` to `shape`, as the pipeline adapts images to the model). An image
    whose headers say decoding it costs more than `max_pixels` (graph_headers.py: a GIF's frames count, each at
    its own size) is an InvalidArgument naming it, before anything is decoded (a decompression bomb: a 420 KB PNG
    can claim 12000 x 12000 pixels)."""
    with tf.control_dependencies([_check_formats(image_bytes)]):
        image_bytes = tf.identity(image_bytes)
    size = int(shape[0])

    def decode(index_and_contents):
        index, contents = index_and_contents
        # A bare signature or a file cut short, named here (its decoder's own error does not say which image);
        # after the pixel check, so a bomb is named as one, but a JPEG's size comes from libjpeg's header scan,
        # which fails on the same damage, so a damaged JPEG skips it.
        why = damage(contents)
        pixels = tf.cond(tf.equal(why, "") | ~tf.io.is_jpeg(contents), lambda: header_pixels(contents),
                         lambda: tf.constant(0, tf.int64))
        check = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
            "serving_bytes: image_bytes[{}] holds {} pixels, more than the limit of {} set at export "
            "(--max_image_pixels)", (index, pixels, max_pixels))])
        with tf.control_dependencies([check]):
            whole = tf.debugging.Assert(tf.equal(why, ""), [tf.strings.join([
                "serving_bytes: image_bytes[", tf.strings.as_string(index), "] is ", why, ": cut short or damaged"])])
        with tf.control_dependencies([whole]):
            return decode_bytes(tf.identity(contents), size)

    pixels = tf.map_fn(decode, (tf.range(tf.shape(image_bytes)[0]), image_bytes),
                       fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))
    return model_input(pixels, shape)


def model_input(pixels, shape: tuple[int, int, int]):
    """Decoded uint8 images [N, size, size, 3] (decode_bytes) -> the model's float32 input of `shape`: the one
    step after decoding, shared by serving_bytes and predict."""
    return tf.cast(fit_images(pixels, tuple(shape)), tf.float32)


def head_names(model, class_names: dict | None) -> dict[str, list[str]]:
    """Class names per output head of `model` (its run's classes.json; "0", "1", ... where there are none)."""
    sizes = {head: int(t.shape[-1]) for head, t in zip(model.output_names, model.outputs)}
    names = {}
    for head, size in sizes.items():
        given = list((class_names or {}).get(head) or [str(i) for i in range(size)])
        if len(given) != size:
            raise ExportError(f"classes.json has {len(given)} {head} class names, the model's {head} head "
                              f"{size} outputs; export the run that wrote it")
        names[head] = given
    return names


def answered_ids(probabilities: dict, decoding) -> dict[str, tf.Tensor]:
    """Class ids per head, in the graph, as answers.pair: the consistent pair (the most probable superclass,
    then the best fine class inside it) for a consistent `decoding`, else each head's argmax."""
    if decoding.consistent and set(probabilities) == {"fine", "coarse"}:
        from mtl_keras.models.hierarchy import membership

        coarse = tf.argmax(probabilities["coarse"], -1, output_type=tf.int32)
        inside = tf.gather(tf.constant(membership(decoding.fine_to_coarse).T), coarse) > 0  # [N, fine]
        fine_p = probabilities["fine"]
        fine = tf.argmax(tf.where(inside, fine_p, tf.fill(tf.shape(fine_p), -np.inf)), -1, output_type=tf.int32)
        return {"fine": fine, "coarse": coarse}
    return {head: tf.argmax(p, -1, output_type=tf.int32) for head, p in probabilities.items()}


def bytes_function(model, pixels_fn, class_names: dict | None, top_k: int,
                   max_pixels: int = DataConfig.max_image_pixels):
    """serving_bytes: encoded images -> each head's probabilities, its top `top_k` class names and scores
    (the answered class first; a head with fewer classes returns all of them) and the hedged label / level;
    images above `max_pixels` are refused (decode_batch). `class_names`: classes.json (names and decoding).
    `pixels_fn` (serving_default's function, `model` called on pixels) answers the decoded images, so the
    SavedModel holds the model's graph once; `model` gives the input shape and the heads' names."""
    from mtl_keras.serving.answers import Decoding

    names = head_names(model, class_names)
    decoding = Decoding.from_dict(class_names or {})
    shape = tuple(model.input_shape[1:])

    def serve(image_bytes):
        with tf.control_dependencies([_not_empty(image_bytes, BYTES, BYTES_INPUT)]):
            image_bytes = tf.identity(image_bytes)
        probabilities = pixels_fn(decode_batch(image_bytes, shape, max_pixels))
        out = dict(probabilities)
        ids = answered_ids(probabilities, decoding)
        for head, p in probabilities.items():
            n = len(names[head])
            _, order = tf.math.top_k(p + 2.0 * tf.one_hot(ids[head], n, dtype=p.dtype), k=min(top_k, n))
            out[f"{head}_classes"] = tf.gather(tf.constant(names[head]), order)
            out[f"{head}_scores"] = tf.gather(p, order, batch_dims=1)
        if set(ids) == {"fine", "coarse"}:
            confidence = tf.gather(probabilities["fine"], ids["fine"], batch_dims=1)
            threshold = -1.0 if decoding.hedge_threshold is None else decoding.hedge_threshold
            fine_level = confidence >= tf.constant(threshold, confidence.dtype)
            out["label"] = tf.where(fine_level, tf.gather(tf.constant(names["fine"]), ids["fine"]),
                                    tf.gather(tf.constant(names["coarse"]), ids["coarse"]))
            out["level"] = tf.where(fine_level, tf.constant("fine"), tf.constant("coarse"))
        return out

    return serve


def decoding_function(class_names: dict | None):
    """The `decoding` signature: the export's fine-to-coarse map, hedge threshold and whether its pair is the
    consistent one, for a client of the SavedModel alone."""
    from mtl_keras.serving.answers import Decoding

    decoding = Decoding.from_dict(class_names or {})

    def describe():
        return {"fine_to_coarse": tf.constant(decoding.fine_to_coarse or [], tf.int32),
                "hedge_threshold": tf.constant(-1.0 if decoding.hedge_threshold is None
                                               else decoding.hedge_threshold, tf.float32),
                "consistent": tf.constant(int(decoding.consistent), tf.int32)}

    return describe


def write_saved_model(model, path: Path, class_names: dict | None, top_k: int,
                      max_pixels: int = DataConfig.max_image_pixels) -> None:
    """The SavedModel with both signatures (serving_default is what `model.export` writes, the model's call on
    `image`, also reachable as `serve`, with serve_pixels's checks of the request)."""
    import keras

    archive = keras.export.ExportArchive()
    # No archive.track(model): add_endpoint already keeps the tf.Variables the endpoints read, and tracking the
    # model as well stores every weight a second time through its keras.Variable wrappers (keras-team/keras
    # #23553): twice the SavedModel size and twice the variable memory in TF Serving and in whatever loads it.
    pixels_fn = archive.add_endpoint("serve", serve_pixels(model), [input_spec(model)])  # serving_default
    # serving_bytes calls that function on the decoded pixels: one trace and one stored graph of the model, not two
    # (ResNet-152: about a third less time writing the SavedModel), and both signatures answer through the same graph.
    archive.add_endpoint(BYTES, bytes_function(model, pixels_fn, class_names, top_k, max_pixels), [bytes_spec()])
    archive.add_endpoint(DECODING, decoding_function(class_names), [])
    archive.write_out(str(path), verbose=False)


def encode_png(images: np.ndarray) -> list[bytes]:
    """uint8 images [N, H, W, C] as PNG strings (lossless: serving_bytes decodes them to the same pixels)."""
    return [tf.io.encode_png(np.asarray(image, np.uint8)).numpy() for image in images]


def run_bytes(loaded, image_bytes: list[bytes], batch_size: int = 256) -> dict[str, np.ndarray]:
    """serving_bytes of a loaded SavedModel on encoded images, `batch_size` at a time."""
    signature = loaded.signatures[BYTES]
    parts = [signature(**{BYTES_INPUT: tf.constant(image_bytes[i:i + batch_size], tf.string)})
             for i in range(0, len(image_bytes), batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def write_warmup(path: Path, model_name: str, images: np.ndarray) -> None:
    """TF Serving warmup: PredictionLog records that load both signatures' kernels before traffic (batch 1 and
    8 of `images` as float pixels for serving_default, then the same images PNG-encoded for serving_bytes)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    pixels = np.clip(np.round(images), 0, 255).astype(np.uint8)
    encoded = np.asarray(encode_png(pixels), object)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, name, batch in [(DEFAULT, IMAGE_INPUT, pixels.astype(np.float32)),
                                       (BYTES, BYTES_INPUT, encoded)]:
            for n in WARMUP_BATCHES:
                request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                                    signature_name=signature))
                request.inputs[name].CopyFrom(tf.make_tensor_proto(batch[:n]))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
