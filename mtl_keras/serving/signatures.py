"""The SavedModel's two TF Serving signatures, its warmup requests, and how to call the bytes signature.

    serving_default   image: float32 [N, H, W, C] raw pixels 0-255        -> fine, coarse (probabilities)
    serving_bytes     image_bytes: string [N] encoded JPEG / PNG / BMP / GIF -> fine, coarse (probabilities),
                      fine_classes, fine_scores, coarse_classes, coarse_scores (the top k per head, best first)

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
from mtl_keras.data.graph_headers import GIF_MAGIC, header_pixels
from mtl_keras.data.images import decode_bytes, fit_images
from mtl_keras.errors import ExportError

DEFAULT = "serving_default"
BYTES = "serving_bytes"
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
        pixels = header_pixels(contents)
        check = tf.debugging.Assert(pixels <= max_pixels, [tf.strings.format(
            "serving_bytes: image_bytes[{}] holds {} pixels, more than the limit of {} set at export "
            "(--max_image_pixels)", (index, pixels, max_pixels))])
        with tf.control_dependencies([check]):
            return decode_bytes(tf.identity(contents), size)

    pixels = tf.map_fn(decode, (tf.range(tf.shape(image_bytes)[0]), image_bytes),
                       fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))
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


def bytes_function(model, class_names: dict | None, top_k: int, max_pixels: int = DataConfig.max_image_pixels):
    """serving_bytes: encoded images -> each head's probabilities and its top `top_k` class names and scores
    (a head with fewer classes returns all of them); images above `max_pixels` are refused (decode_batch)."""
    names = head_names(model, class_names)
    shape = tuple(model.input_shape[1:])

    def serve(image_bytes):
        probabilities = model(decode_batch(image_bytes, shape, max_pixels), training=False)
        out = dict(probabilities)
        for head, p in probabilities.items():
            scores, ids = tf.math.top_k(p, k=min(top_k, len(names[head])))
            out[f"{head}_classes"] = tf.gather(tf.constant(names[head]), ids)
            out[f"{head}_scores"] = scores
        return out

    return serve


def write_saved_model(model, path: Path, class_names: dict | None, top_k: int,
                      max_pixels: int = DataConfig.max_image_pixels) -> None:
    """The SavedModel with both signatures (serving_default is what `model.export` writes: the model's call on
    `image`, also reachable as `serve`)."""
    import keras

    archive = keras.export.ExportArchive()
    # No archive.track(model): add_endpoint already keeps the tf.Variables the endpoints read, and tracking the
    # model as well stores every weight a second time through its keras.Variable wrappers (keras-team/keras
    # #23553): twice the SavedModel size and twice the variable memory in TF Serving and in whatever loads it.
    archive.add_endpoint("serve", model.__call__, [input_spec(model)])  # the first endpoint: serving_default
    archive.add_endpoint(BYTES, bytes_function(model, class_names, top_k, max_pixels), [bytes_spec()])
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
